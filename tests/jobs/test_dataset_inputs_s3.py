"""WebDataset tars and Parquet tables as inputs, end to end on SeaweedFS: sidecar fields fill prompt templates,
named columns are carried to the output, ids are tar+key and the table's id column."""

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from tests.support.images import image_bytes

pytestmark = pytest.mark.integration


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_rows(fs, prefix: str) -> dict[str, dict]:
    rows = {}
    for name in fs.find(prefix):
        if name.rsplit("/", 1)[-1].startswith("part-"):
            for row in pq.read_table(io.BytesIO(fs.cat(name))).to_pylist():
                assert row["id"] not in rows, "duplicate id"
                rows[row["id"]] = row
    return rows


@pytest.fixture
def s3_env(seaweedfs, monkeypatch):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    return seaweedfs.fs()


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_webdataset_shards_with_sidecars(s3_env, s3_bucket, tiny_models):
    fs = s3_env
    categories = {}
    for shard in range(3):
        members = {}
        for sample in range(3):
            key = f"s{shard}{sample}"
            categories[f"{shard:05d}.tar/{key}"] = f"cat{sample}"  # ids are relative to the input prefix
            members[f"{key}.jpg"] = image_bytes(shard * 3 + sample, (40, 30), "JPEG")
            members[f"{key}.json"] = json.dumps({"category": f"cat{sample}", "license": "cc-by"}).encode()
            members[f"{key}.txt"] = f"caption {key}".encode()
        members["nojpg.json"] = b'{"category": "x"}'  # a sample without an image: an error row, not dropped
        fs.pipe(f"{s3_bucket}/shards/{shard:05d}.tar", tar_bytes(members))
    argv = ["caption", "--input", f"s3://{s3_bucket}/shards/{{00000..00002}}.tar"]
    argv += [
        "--output",
        f"s3://{s3_bucket}/captions/",
        "--model",
        str(tiny_models["llava"]),
        "--max-new-tokens",
        "3",
    ]
    argv += [
        "--prompt",
        "Describe this {category} photo.",
        "--keep-columns",
        "license,txt",
        "--max-error-rate",
        "0.5",
    ]
    assert main(argv) == 0
    rows = read_rows(fs, f"{s3_bucket}/captions")
    no_image = {f"{shard:05d}.tar/nojpg" for shard in range(3)}
    assert set(rows) == set(categories) | no_image
    for row_id, category in categories.items():
        row = rows[row_id]
        assert row["error"] is None and row["prompt"] == f"Describe this {category} photo."
        assert row["license"] == "cc-by" and row["txt"] == f"caption {row_id.rsplit('/', 1)[1]}"
        tar_name, key = row_id.rsplit("/", 1)
        assert row["source"] == f"s3://{s3_bucket}/shards/{tar_name}#{key}"
    assert all(rows[row_id]["error"].startswith("read: sample has no image") for row_id in no_image)


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_parquet_table_with_prompt_and_id_columns(s3_env, s3_bucket, tiny_models):
    fs = s3_env
    table = pa.table(
        {
            "uid": ["a1", "a2", "a3", "a4"],
            "image": [image_bytes(i, (30 + 10 * i, 40)) for i in range(4)],
            "question": ["What is it?", "What colour?", "How many?", "Where?"],
            "split": ["train", "train", "val", "val"],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.pipe(f"{s3_bucket}/tables/part-0.parquet", buffer.getvalue())
    argv = ["caption", "--input", f"s3://{s3_bucket}/tables/", "--output", f"s3://{s3_bucket}/captions/"]
    argv += ["--model", str(tiny_models["llava_interleave"]), "--max-new-tokens", "3", "--id-column", "uid"]
    argv += ["--prompt-column", "question", "--keep-columns", "split"]
    assert main(argv) == 0
    rows = read_rows(fs, f"{s3_bucket}/captions")
    assert sorted(rows) == ["a1", "a2", "a3", "a4"]
    assert [rows[uid]["prompt"] for uid in ("a1", "a2", "a3", "a4")] == table.column("question").to_pylist()
    assert [rows[uid]["split"] for uid in ("a1", "a2", "a3", "a4")] == ["train", "train", "val", "val"]
    assert all(row["error"] is None and row["generated_text"] is not None for row in rows.values())
