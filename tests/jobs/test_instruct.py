"""The instruct job end to end: questions from the model, answers with the right image, LLaVA output, resume.

The built-in llava checkpoint (models/llava) only learnt to caption shapes: whatever it is asked, it answers with
the true caption of the image it sees (in a later turn, its colour and shape only). So stage 1 "asks" the caption,
and every answer of stage 2, in every turn, must be the caption of that row's own image: a pipeline that mixes up
images, drops the image in later turns or mis-renders the conversation fails.
"""

import json

import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.operators.model_source import builtin_model_path
from llava_batch.training.oracle import llava_answers_after_history
from llava_batch.training.shapes import samples

pytestmark = pytest.mark.integration

IMAGES = 6


@pytest.fixture
def shape_folder(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    truth = {}
    for index, sample in enumerate(samples("llava", "heldout", IMAGES, seed=0)):
        name = f"shape-{index:02d}.png"
        sample.images[0].save(folder / name)
        truth[name] = sample.answer
    (folder / "nested" / "broken.png").write_bytes(b"not a png")
    return folder, truth


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_instruct_writes_one_row_per_conversation_with_answers_for_its_own_image(
    tmp_path, shape_folder, capsys
):
    folder, truth = shape_folder
    output, export = tmp_path / "instruct", tmp_path / "llava.json"
    argv = [
        "instruct",
        "--input",
        str(folder),
        "--output",
        str(output),
        "--model",
        str(builtin_model_path("llava")),
    ]
    argv += ["--instruction", "What is in the image?", "--questions", "2", "--turns", "2"]
    argv += ["--follow-up", "What do you see?", "--max-new-tokens", "16", "--question-max-new-tokens", "16"]
    argv += ["--files-per-shard", "4", "--batch-size", "4", "--max-error-rate", "0.5", "--dtype", "float32"]
    argv += ["--export-json", str(export)]
    assert main(argv) == 0

    table = pq.read_table(output)
    assert table.schema.names == ["id", "image", "conversations", "model", "settings", "error", "shard_id"]
    rows = {row["id"]: row for row in table.to_pylist()}
    # The model writes one line per image (its caption): one conversation each, id `<input id>#q1`.
    assert sorted(rows) == sorted([f"{name}#q1" for name in truth] + ["nested/broken.png"])
    broken = rows.pop("nested/broken.png")
    assert (
        broken["error"] == "decode: not an image: starts with 'not a png'" and broken["conversations"] is None
    )
    # No two images share colour and shape, so a later turn that names them names its own image's.
    assert len({" ".join(answer.split()[:3]) for answer in truth.values()}) == len(truth)
    for name, answer in truth.items():
        row = rows[f"{name}#q1"]
        assert row["error"] is None and row["image"] == str(folder / name)
        later = row["conversations"][3]["value"]
        assert row["conversations"] == [
            {"from": "human", "value": f"<image>\n{answer}"},  # stage 1 "asked" this image's caption
            {"from": "gpt", "value": answer},
            {"from": "human", "value": "What do you see?"},  # no other question: the follow-up instruction
            {"from": "gpt", "value": later},
        ]
        # A later turn: the caption of the same image, or its colour and shape (the checkpoint often stops there).
        assert later in llava_answers_after_history(answer), (name, later)
        assert json.loads(row["settings"])["questions"] == 2 and row["model"] == str(
            builtin_model_path("llava")
        )
    summary = capsys.readouterr().out
    assert "rows written      7" in summary and "rows with errors  1 (decode: 1)" in summary

    exported = json.loads(export.read_text())
    assert sorted(record["id"] for record in exported) == sorted(rows)  # error rows are not exported
    assert exported[0] == {key: rows[exported[0]["id"]][key] for key in ("id", "image", "conversations")}

    # The same command again: every shard is committed, nothing is redone, still one row per conversation.
    before = {path.name: path.stat().st_mtime_ns for path in output.glob("part-*.parquet")}
    assert len(before) == 3  # 4 + 2 images at the top, the broken one in its own folder
    assert main(argv) == 0
    assert "already committed 3 shard(s) (skipped)" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in output.glob("part-*.parquet")} == before
    assert sorted(pq.read_table(output).column("id").to_pylist()) == sorted([*rows, "nested/broken.png"])
