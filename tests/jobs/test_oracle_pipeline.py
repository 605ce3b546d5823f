"""The accuracy oracle through the full pipeline: CLI, Ray, Parquet in and out, for every family.

200 held-out samples per family go in as a Parquet table (images, per-row prompt, VipLLaVA annotation), the
trained checkpoints in models/ caption them, and the exact-match accuracy must reach 0.95. A pipeline that
feeds the wrong image to a row, pads on the wrong side, normalises wrongly or renders the wrong template fails.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.training.oracle import png_bytes
from llava_batch.training.shapes import samples

pytestmark = pytest.mark.integration

HELD_OUT = 200
BAR = 0.95
# The families whose trained checkpoint ships in models/ (see training/README.md).
SHIPPED = ["llava", "llava_next", "vipllava", "llava_interleave"]


def write_table(path, family: str) -> dict[str, str]:
    rows = samples(family, "heldout", HELD_OUT, seed=0)
    table = pa.table(
        {
            "uid": [f"{family}-{index:04d}" for index in range(len(rows))],
            # Clean images: the pipeline's own visual-prompt operator draws VipLLaVA's marks.
            "images": [[png_bytes(image) for image in row.images] for row in rows],
            "question": [row.prompt for row in rows],
            "visual_prompt": [json.dumps(row.visual_prompt) if row.visual_prompt else None for row in rows],
            "answer": [row.answer for row in rows],
        }
    )
    path.mkdir(parents=True)
    pq.write_table(table, path / "heldout.parquet")
    return dict(zip(table.column("uid").to_pylist(), table.column("answer").to_pylist()))


@pytest.mark.parametrize("family", SHIPPED)
def test_trained_model_reaches_the_bar_through_the_pipeline(family, tmp_path):
    answers = write_table(tmp_path / "in", family)
    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    argv += ["--model", f"builtin:{family}", "--id-column", "uid", "--image-column", "images"]
    argv += [
        "--prompt-column",
        "question",
        "--visual-prompt-column",
        "visual_prompt",
        "--keep-columns",
        "answer",
    ]
    argv += ["--max-new-tokens", "16", "--batch-size", "16", "--files-per-shard", "1"]
    assert main(argv) == 0
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(row["id"] for row in rows) == sorted(answers)
    correct = sum(row["generated_text"] == answers[row["id"]] for row in rows)
    accuracy = correct / len(rows)
    print(f"{family}: exact match {accuracy:.3f} on {len(rows)} held-out samples through the pipeline")
    assert accuracy >= BAR, f"{family}: {accuracy:.3f} < {BAR}"
