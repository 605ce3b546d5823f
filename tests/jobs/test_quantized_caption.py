"""`--quantization` through the CLI: a caption job on builtin:llava with 8-bit replicas, its manifest and summary;
and the refusal, before Ray starts, where bitsandbytes is missing."""

import importlib.util
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.training.oracle import png_bytes
from llava_batch.training.shapes import samples

FULL_PRECISION_BYTES = 2_136_744  # builtin:llava in float32 (model.get_memory_footprint())


def write_heldout(folder, count: int) -> dict[str, str]:
    rows = samples("llava", "heldout", count, seed=0)
    ids = [f"q-{index}" for index in range(count)]
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "uid": ids,
            "image": [png_bytes(row.images[0]) for row in rows],
            "question": [row.prompt for row in rows],
        }
    )
    pq.write_table(table, folder / "heldout.parquet")
    return dict(zip(ids, (row.answer for row in rows)))


@pytest.mark.integration
@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_8bit_caption_job_records_quantization_and_replica_memory(tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    answers = write_heldout(tmp_path / "in", 4)
    output = tmp_path / "out"
    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(output), "--model", "builtin:llava"]
    argv += ["--id-column", "uid", "--image-column", "image", "--prompt-column", "question"]
    argv += ["--max-new-tokens", "8", "--quantization", "8bit"]
    assert main(argv) == 0
    rows = {row["id"]: row for row in pq.read_table(output).to_pylist()}
    assert {key: row["generated_text"] for key, row in rows.items()} == answers
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["config"]["quantization"] == "8bit"
    memory = manifest["model_replicas"]["model_memory_bytes"]
    assert 0 < memory < 0.5 * FULL_PRECISION_BYTES  # int8 Linear weights (measured 878,088 bytes)
    assert f"; model {memory / 2**20:.1f} MiB per replica" in capsys.readouterr().out
    assert json.loads((output / "_job.json").read_text())["quantization"] == "8bit"


def test_quantization_without_bitsandbytes_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    write_heldout(tmp_path / "in", 1)
    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    argv += ["--model", "builtin:llava", "--image-column", "image"]
    assert main(argv + ["--quantization", "4bit"]) == 2
    err = capsys.readouterr().err
    assert "quantization: '4bit' needs the bitsandbytes package" in err
    assert "pip install llava-batch[quant]" in err
