"""`llava-batch caption` from s3:// to s3:// on a real object store (SeaweedFS), for every model family.

Also the pipeline-level batch-invariance check: each row's text equals the model's output for that image alone.
"""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.pipeline.families import FAMILIES
from tests.support.images import SIZES, image_bytes

pytestmark = pytest.mark.integration

PROMPT = "Describe this image."
MAX_NEW_TOKENS = 8


def upload_inputs(fs, bucket: str) -> dict[str, bytes]:
    files = {
        f"images/{index}-{w}x{h}.png": image_bytes(index, (w, h)) for index, (w, h) in enumerate(SIZES[:5])
    }
    files["images/corrupt.jpg"] = b"\xff\xd8\xff\xe0 truncated jpeg"
    files["images/notes.txt"] = b"skipped"
    for key, data in files.items():
        with fs.open(f"{bucket}/{key}", "wb") as handle:
            handle.write(data)
    return {key: data for key, data in files.items() if not key.endswith(".txt")}


def read_output(fs, bucket: str) -> list[dict]:
    names = sorted(name for name in fs.ls(f"{bucket}/captions") if name.endswith(".parquet"))
    rows = []
    for name in names:
        with fs.open(name, "rb") as handle:
            rows.extend(pq.read_table(io.BytesIO(handle.read())).to_pylist())
    return rows


def alone(model: str, images: list[bytes]) -> list[str]:
    """What the model generates for each image on its own (batch of one), with the operators built once."""
    preprocess = PreprocessForModel(model, max_image_pixels=10**8)
    generate = Generate(
        model, generate_kwargs={"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}, dtype="float32"
    )
    texts = []
    for data in images:
        blob = np.empty(1, dtype=object)
        blob[0] = data
        batch = {
            "id": np.array(["x"], dtype=object),
            "image_bytes": blob,
            "prompt": np.array([PROMPT], dtype=object),
        }
        texts.append(generate(preprocess(batch))["generated_text"][0])
    return texts


# LLaVA-1.5 in the smoke set of `make test`; the other families in `make test-slow` (the oracle test runs all four).
FAMILY_PARAMS = [
    pytest.param(family, marks=() if family == "llava" else pytest.mark.slow) for family in FAMILIES
]


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_caption_s3_to_s3(family, seaweedfs, s3_bucket, tiny_models, monkeypatch):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    fs = seaweedfs.fs()
    inputs = upload_inputs(fs, s3_bucket)
    model = str(tiny_models[family])
    argv = ["caption", "--input", f"s3://{s3_bucket}/images/", "--output", f"s3://{s3_bucket}/captions/"]
    argv += [
        "--model",
        model,
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--batch-size",
        "4",
    ]
    argv += ["--files-per-shard", "3", "--max-error-rate", "0.5"]
    assert main(argv) == 0

    rows = read_output(fs, s3_bucket)
    expected_ids = sorted(key.removeprefix("images/") for key in inputs)
    assert sorted(row["id"] for row in rows) == expected_ids
    by_id = {row["id"]: row for row in rows}
    assert {row["source"] for row in rows} == {f"s3://{s3_bucket}/{key}" for key in inputs}
    assert by_id["corrupt.jpg"]["error"].startswith("decode: ")
    assert by_id["corrupt.jpg"]["generated_text"] is None
    good = [row for row in rows if row["id"] != "corrupt.jpg"]
    assert all(row["error"] is None and row["finish_reason"] in ("stop", "length") for row in good)
    assert all(row["model"] == model and row["prompt"] == PROMPT for row in good)

    # Batched in the pipeline (batch 4, left-padded, images of different sizes) == generated alone.
    expected = alone(model, [inputs[f"images/{row['id']}"] for row in good])
    assert [row["generated_text"] for row in good] == expected

    # A second run into the same output: still exactly one row per image.
    assert main(argv) == 0
    assert sorted(row["id"] for row in read_output(fs, s3_bucket)) == expected_ids


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_secrets_never_reach_output_manifest_or_logs(seaweedfs, s3_bucket, tiny_models, monkeypatch, capfd):
    from tests.conftest import SEAWEEDFS_SECRET_KEY

    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    fs = seaweedfs.fs()
    fs.pipe(f"{s3_bucket}/images/a.png", image_bytes(0, (40, 30)))
    fs.pipe(f"{s3_bucket}/images/bad.jpg", b"not an image")
    argv = ["caption", "--input", f"s3://{s3_bucket}/images/", "--output", f"s3://{s3_bucket}/captions/"]
    argv += ["--model", str(tiny_models["llava"]), "--max-new-tokens", "3", "--max-error-rate", "1"]
    assert main(argv) == 0
    written = b"".join(fs.cat(name) for name in fs.find(f"{s3_bucket}/captions"))
    assert b"_manifest.json" not in written  # sanity: we read contents, not names
    assert b'"rows_written": 2' in written, "the manifest should be among what was read"
    printed = capfd.readouterr()
    secret = SEAWEEDFS_SECRET_KEY.encode()
    assert secret not in written
    assert SEAWEEDFS_SECRET_KEY not in printed.out + printed.err
