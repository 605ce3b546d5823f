"""The Python API: `build_processor` inside a caller's own Ray Data pipeline, and the jobs as calls.

The trained builtin:llava checkpoint captions shape images whose true captions are known (training/shapes.py), so
the rows' texts are checked, not only their presence.
"""

import json

import pyarrow.parquet as pq
import pytest

import llava_batch
from llava_batch.training.oracle import png_bytes
from llava_batch.training.shapes import samples

pytestmark = pytest.mark.integration


def shape_rows(count: int = 4):
    shots = samples("llava", "heldout", count, seed=1)
    rows = [
        # `prompt` and `id` are names the pipeline uses inside: the caller's values must come back untouched.
        {"uid": f"u{index}", "image": png_bytes(shot.images[0]), "prompt": shot.prompt, "id": 100 + index}
        for index, shot in enumerate(shots)
    ]
    # As HF `datasets` stores images: {bytes, path} structs (other cell kinds: test_processor_rows.py).
    for index, row in enumerate(rows):
        row["image"] = {"bytes": row["image"], "path": f"shape-{index}.png"}
    truth = {f"u{index}": shot.answer for index, shot in enumerate(shots)}
    return rows, truth


def test_processor_composes_with_the_callers_own_map_batches(tmp_path):
    import ray.data

    context = ray.data.DataContext.get_current()
    before = (context.enable_progress_bars, context.execution_options.preserve_order)
    rows, truth = shape_rows()
    broken_image = {"bytes": b"<html>not an image</html>", "path": "page.html"}
    rows.append({"uid": "broken", "image": broken_image, "prompt": "?", "id": 999})
    processor = llava_batch.build_processor(
        model="builtin:llava", prompt_column="prompt", max_new_tokens=16, batch_size=4
    )
    dataset = ray.data.from_items(rows).map_batches(lambda batch: {**batch, "before": batch["id"] * 2})
    result = processor(dataset).map_batches(
        lambda batch: {
            **batch,
            "words": [len(text.split()) if text else 0 for text in batch["generated_text"]],
        }
    )
    out = {row["uid"]: row for row in result.take_all()}

    assert sorted(out) == sorted([*truth, "broken"])  # one row per input, none lost, none twice
    for uid, answer in truth.items():
        row = out[uid]
        assert row["generated_text"] == answer and row["error"] is None, row
        assert (
            row["finish_reason"] == "stop" and row["num_output_tokens"] > 0 and row["num_input_tokens"] > 16
        )
        assert row["words"] == len(answer.split())
    # The caller's columns come back as they were, whatever their names.
    assert [out[f"u{index}"]["id"] for index in range(4)] == [100, 101, 102, 103]
    assert [out[f"u{index}"]["before"] for index in range(4)] == [200, 202, 204, 206]
    assert out["u1"]["image"] == rows[1]["image"]
    assert out["u0"]["prompt"] == rows[0]["prompt"]
    broken = out["broken"]
    assert broken["error"].startswith("decode: not an image: starts with '<html")
    assert broken["generated_text"] is None and broken["id"] == 999
    assert set(out["u0"]) == {
        "uid",
        "image",
        "prompt",
        "id",
        "before",
        "generated_text",
        "num_input_tokens",
        "num_output_tokens",
        "finish_reason",
        "error",
        "words",
    }
    # Ray's global DataContext is as the caller left it.
    assert (context.enable_progress_bars, context.execution_options.preserve_order) == before


def test_processor_settings_are_checked_when_it_is_built():
    with pytest.raises(llava_batch.ConfigError, match=r"^temperature: 'nan' is not a finite number"):
        llava_batch.build_processor(model="builtin:llava", temperature="nan")
    with pytest.raises(
        llava_batch.ConfigError,
        match=r"prompt_column: cannot be combined with prompts_file|conversation_column: cannot be combined with prompt_column",
    ):
        llava_batch.build_processor(model="builtin:llava", prompt_column="a", conversation_column="b")
    with pytest.raises(llava_batch.ConfigError, match=r"builtin:nope is not a built-in model"):
        llava_batch.build_processor(model="builtin:nope")


def test_a_missing_image_column_is_named():
    import ray.data

    processor = llava_batch.build_processor(model="builtin:llava")
    with pytest.raises(
        llava_batch.ConfigError, match=r"image_column: 'image' is not a column .*\['picture'\]"
    ):
        processor(ray.data.from_items([{"picture": b"x"}]))


def test_caption_call_runs_the_job_and_returns_its_counts(tmp_path):
    from PIL import Image

    shots = samples("llava", "heldout", 3, seed=2)
    folder = tmp_path / "images"
    folder.mkdir()
    for index, shot in enumerate(shots):
        Image.open(__import__("io").BytesIO(png_bytes(shot.images[0]))).save(folder / f"{index}.png")
    result = llava_batch.caption(
        input=str(folder),
        output=str(tmp_path / "out"),
        model="builtin:llava",
        prompt=shots[0].prompt,
        max_new_tokens=16,
    )
    assert (result.rows, result.errors) == (3, 0)
    assert "rows written      3" in result.summary
    rows = {row["id"]: row for row in pq.read_table(tmp_path / "out").to_pylist()}
    assert rows["0.png"]["generated_text"] == shots[0].answer
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["config"]["model"] == "builtin:llava"
    # The same call again resumes: everything is committed, nothing runs twice.
    again = llava_batch.caption(
        input=str(folder),
        output=str(tmp_path / "out"),
        model="builtin:llava",
        prompt=shots[0].prompt,
        max_new_tokens=16,
    )
    assert again.skipped_shards == 1 and again.rows == 0
    assert len(pq.read_table(tmp_path / "out")) == 3
