"""benchmarks/gpu_generation.py --config tiny: runs on CPU without Ray and reports throughput and agreement.

The script is meant for GPU machines that have no Ray; this runs its tiny configuration (same classes and
shapes, CPU-sized) in a subprocess where importing `ray` fails, and checks the JSON report and the printed table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Each case runs the benchmark script in a fresh interpreter: `make test-slow` (CI runs it).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("llava", "llava_next", "llava_interleave")
BATCH_SIZES = (1, 4)


def run_script(tmp: Path, *options: str) -> dict[str, Any]:
    """The tiny configuration on CPU in a subprocess that cannot import Ray; the JSON report and stdout."""
    # A `ray` that cannot be imported: the GPU machines the script is for have no Ray.
    no_ray = tmp / "no_ray"
    (no_ray / "ray").mkdir(parents=True)
    (no_ray / "ray" / "__init__.py").write_text(
        "raise ImportError('benchmarks/gpu_generation.py must not import ray')\n"
    )
    report_path = tmp / "report.json"
    env = {
        **os.environ,
        # The checkout's root, so that `-m benchmarks.gpu_generation` resolves wherever the test runs from.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(no_ray), str(ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_generation",
        "--config",
        "tiny",
        "--device",
        "cpu",
        "--repeats",
        "1",
    ]
    command += [*options, "--json-out", str(report_path)]
    completed = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return {"report": json.loads(report_path.read_text()), "stdout": completed.stdout}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_script(tmp_path_factory.mktemp("gpu-script"), "--batch-sizes", *map(str, BATCH_SIZES))


def rows(report: dict[str, Any], variant: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(row["family"], row["batch_size"]): row for row in report["results"] if row["variant"] == variant}


def test_every_variant_reports_positive_throughput(run: dict[str, Any]) -> None:
    report = run["report"]
    assert report["config"] == "tiny" and report["environment"]["device"].startswith("CPU")
    expected = {
        "operator": {(family, size) for family in FAMILIES for size in BATCH_SIZES},
        "pipeline": {(family, size) for family in FAMILIES for size in BATCH_SIZES},
        "loop": {(family, 1) for family in FAMILIES},
    }
    for variant, keys in expected.items():
        found = rows(report, variant)
        assert set(found) == keys, variant
        for key, row in found.items():
            assert row["images_per_s"] > 0, (variant, key)
            assert row["output_tokens_per_s"] == pytest.approx(row["images_per_s"] * report["new_tokens"])
    for row in rows(report, "operator").values():
        assert row["preprocess_images_per_s"] > 0
        assert 0 < row["end_to_end_images_per_s"] < row["images_per_s"]


def test_operator_and_pipeline_really_batch(run: dict[str, Any]) -> None:
    for (family, size), row in rows(run["report"], "pipeline").items():
        assert row["generate_rows_per_call"] == [size], family
    # The operator decodes through `size` slots (continuous batching, no model.generate call); every row has
    # the same fixed length here, so every decoding step holds all of them.
    for (family, size), row in rows(run["report"], "operator").items():
        assert (row["generate_rows_per_call"], row["rows_per_decode_step"]) == ([], size), family
    for (family, _), row in rows(run["report"], "loop").items():
        assert row["generate_rows_per_call"] == [1], family


def test_operator_outputs_agree_with_the_per_image_loop(run: dict[str, Any]) -> None:
    agreement = run["report"]["agreement"]
    assert {(entry["family"], entry["batch_size"]) for entry in agreement} == {
        (family, size) for family in FAMILIES for size in BATCH_SIZES
    }
    for entry in agreement:
        assert entry["rows_compared"] >= 4
        assert entry["operator_vs_loop"] == 1.0, entry


def test_printed_table_has_a_line_per_variant_with_positive_rate(run: dict[str, Any]) -> None:
    lines = run["stdout"].splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("family"))
    body = lines[header + 2 :]
    table = [line.split() for line in body[: body.index("")]]  # the table ends at the first blank line
    seen = {(cells[0], cells[1], int(cells[2])) for cells in table}
    assert seen == {
        (family, variant, size)
        for family in FAMILIES
        for variant, sizes in (("operator", BATCH_SIZES), ("pipeline", BATCH_SIZES), ("loop", (1,)))
        for size in sizes
    }
    assert all(float(cells[3]) > 0 for cells in table)
    assert any(line.startswith("SUMMARY gpu_generation: operator llava b1") for line in lines)


def test_several_prompts_per_image_share_the_image_and_agree_with_the_loop(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = run_script(
        tmp_path_factory.mktemp("gpu-script-prompts"),
        *("--families", "llava", "--batch-sizes", "4", "--prompts-per-image", "2", "--loop-images", "4"),
    )
    report = run["report"]
    assert report["prompts_per_image"] == 2
    operator = rows(report, "operator")[("llava", 4)]
    assert operator["generate_rows_per_call"] == [4]
    # 4 rows = 2 images x 2 prompts; the loop ran the same 4 rows one by one.
    assert report["agreement"] == [
        {
            **report["agreement"][0],
            "family": "llava",
            "batch_size": 4,
            "rows_compared": 4,
            "operator_vs_loop": 1.0,
        }
    ]


def test_varied_lengths_stop_rows_early_alike_in_every_variant(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = run_script(
        tmp_path_factory.mktemp("gpu-script-varied"),
        *("--families", "llava", "--batch-sizes", "4", "--varied-lengths", "--min-images", "8"),
    )
    report = run["report"]
    assert report["varied_lengths"] is True and report["length_window"] == 4
    assert "'eos_token_id':" in run["stdout"]  # the probed stop token, printed with the decoding settings
    found = {row["variant"]: row for row in report["results"]}
    tokens_per_image = {
        variant: row["output_tokens_per_s"] / row["images_per_s"] for variant, row in found.items()
    }
    # Rows stop at the probed token, before the 8-token limit on average, and every variant counts the same
    # tokens for the rows it shares with the loop; the operator's outputs equal the loop's.
    assert 1 <= tokens_per_image["operator"] < report["new_tokens"]
    assert tokens_per_image["operator"] == pytest.approx(tokens_per_image["pipeline"])
    # The rows differ in length (what the slots save on), alike in both variants.
    spread = found["operator"]["tokens_per_row"]
    assert spread == found["pipeline"]["tokens_per_row"]
    assert 1 <= spread["min"] < spread["max"] <= report["new_tokens"]
    assert "new tokens per row (operator):\n  llava             batch   4: min " in run["stdout"]
    assert report["agreement"][0]["operator_vs_loop"] == 1.0
    assert report["agreement"][0]["pipeline_vs_loop"] == 1.0
