"""The caption job end to end on local files: Ray Data, CPU and model actor pools, Parquet output."""

import json
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from tests.support.images import write_images

pytestmark = pytest.mark.integration


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images"
    names = write_images(folder, 5)
    (folder / "nested").mkdir()
    (folder / "nested" / "broken.jpg").write_bytes(b"<html>this is not a jpeg</html>")
    (folder / "README.txt").write_text("not an image, skipped")
    return folder, sorted(names + ["nested/broken.jpg"])


def read_rows(output):
    table = pq.read_table(output)
    return {row["id"]: row for row in table.to_pylist()}


def test_caption_writes_one_row_per_image_with_errors_as_rows(tmp_path, image_folder, tiny_models, capsys):
    folder, expected_ids = image_folder
    output = tmp_path / "captions"
    argv = ["caption", "--input", str(folder), "--output", str(output), "--model", str(tiny_models["llava"])]
    # One broken file in six is over the default --max-error-rate of 10%.
    argv += [
        "--max-new-tokens",
        "6",
        "--batch-size",
        "4",
        "--files-per-shard",
        "4",
        "--max-error-rate",
        "0.5",
    ]
    argv += ["--prompt", "What is it?"]  # last: the test swaps it below
    assert main(argv) == 0
    rows = read_rows(output)
    assert sorted(rows) == expected_ids
    broken = rows["nested/broken.jpg"]
    assert broken["error"] == "decode: not an image: starts with '<html>this is no'"
    assert broken["generated_text"] is None and broken["source"] == str(folder / "nested" / "broken.jpg")
    good = [row for name, row in rows.items() if name != "nested/broken.jpg"]
    assert all(row["error"] is None for row in good)
    assert all(isinstance(row["generated_text"], str) for row in good)
    assert all(row["finish_reason"] in ("stop", "length") for row in good)
    assert all(0 < row["num_output_tokens"] <= 6 for row in good)
    assert all(row["num_input_tokens"] > 5 and row["prompt"] == "What is it?" for row in good)
    assert {row["model"] for row in rows.values()} == {str(tiny_models["llava"])}
    summary = capsys.readouterr().out
    assert "rows written      6" in summary and "rows with errors  1 (decode: 1)" in summary
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["counts"]["rows_written"] == 6 and manifest["counts"]["errors_by_kind"] == {"decode": 1}
    assert manifest["skipped_files"] == {
        "txt": 1
    }  # README.txt: not an input, but not silently ignored either
    # The model replicas' time: busy on batches, idle waiting for input, within the run's wall time.
    replicas = manifest["model_replicas"]
    assert replicas["replicas"] == 1
    assert replicas["image_prefills_saved"] == 0  # one prompt per image: nothing to share
    # Rows decoded through continuous batching (the default): the share of decoding slots that held a row.
    assert 0 < replicas["decode_slots_filled"] <= 1
    assert f"decoding slots {100 * replicas['decode_slots_filled']:.0f}% filled" in summary
    assert 0 < replicas["generate_s"] <= replicas["busy_s"]
    assert replicas["idle_waiting_for_input_s"] >= 0
    assert replicas["busy_s"] + replicas["idle_waiting_for_input_s"] <= manifest["elapsed_s"] * 1 + 0.5
    total = replicas["busy_s"] + replicas["idle_waiting_for_input_s"]
    # busy and idle are rounded to 1 ms in the manifest, the share is computed before rounding.
    assert replicas["idle_share"] == pytest.approx(
        replicas["idle_waiting_for_input_s"] / total, abs=0.002 / total + 1e-4
    )
    line = re.search(
        r"model replicas    1: busy ([\d.]+) s, idle waiting for input ([\d.]+) s \(([\d.]+)%\)", summary
    )
    assert line, summary
    assert float(line.group(1)) == pytest.approx(replicas["busy_s"], abs=0.05)
    assert float(line.group(2)) == pytest.approx(replicas["idle_waiting_for_input_s"], abs=0.05)

    # A second run into the same output neither appends nor redoes: every id is still there exactly once.
    before = {path.name: path.stat().st_mtime_ns for path in output.glob("part-*.parquet")}
    assert main(argv) == 0
    rerun_summary = capsys.readouterr().out
    assert "already committed 3 shard(s), 6 rows (skipped)" in rerun_summary
    assert "model replicas" not in rerun_summary  # no batch reached a replica
    assert sorted(read_rows(output)) == expected_ids
    assert {path.name: path.stat().st_mtime_ns for path in output.glob("part-*.parquet")} == before

    # Other settings into the same output are refused before any work; --overwrite redoes it.
    assert main(argv[:-2] + ["--prompt", "Something else?"]) == 2
    assert "changed: prompt" in capsys.readouterr().err
    assert main(argv[:-2] + ["--prompt", "Something else?", "--overwrite"]) == 0
    rows = read_rows(output)
    assert sorted(rows) == expected_ids and {row["prompt"] for row in rows.values()} == {"Something else?"}


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_output_loads_with_hf_datasets(tmp_path, tiny_models):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "in"
    write_images(folder, 3)
    output = tmp_path / "out"
    argv = [
        "caption",
        "--input",
        str(folder),
        "--output",
        str(output),
        "--model",
        str(tiny_models["vipllava"]),
    ]
    assert main(argv + ["--max-new-tokens", "4"]) == 0
    loaded = datasets.load_dataset("parquet", data_files=str(output / "*.parquet"), split="train")
    assert sorted(loaded["id"]) == ["img-000.png", "img-001.jpg", "img-002.png"]
    assert {"generated_text", "finish_reason", "num_output_tokens", "error"} <= set(loaded.column_names)


# `.ci/check_wheel.sh` runs the installed `llava-batch caption` on every CI run as well.
@pytest.mark.slow  # a fresh interpreter and its own local Ray
def test_cli_subprocess_is_the_front_door(tmp_path, tiny_models):
    folder = tmp_path / "in"
    write_images(folder, 2)
    command = [sys.executable, "-m", "llava_batch.cli.main", "caption", "--input", str(folder)]
    command += [
        "--output",
        str(tmp_path / "out"),
        "--model",
        str(tiny_models["llava"]),
        "--max-new-tokens",
        "3",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows written      2" in done.stdout
    assert pq.read_table(tmp_path / "out").num_rows == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (["--batch-size", "0"], "batch_size: 0 is out of range"),
        (["--replicas", "3:1"], "replicas: '3:1' must satisfy"),
        (["--model", "/nonexistent/model"], "is not a model directory"),
        # flash-attn is not installed in the test environment.
        (
            ["--attn-implementation", "flash_attention_2"],
            "'flash_attention_2' needs the flash-attn package, which is not installed",
        ),
    ],
)
def test_invalid_settings_fail_before_ray_starts(tmp_path, tiny_models, capsys, changes, message, own_ray):
    import ray

    folder = tmp_path / "in"
    write_images(folder, 1)
    argv = [
        "caption",
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "out"),
        "--model",
        str(tiny_models["llava"]),
    ]
    assert main(argv + changes) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_a_model_failing_its_check_after_ray_started_stops_that_ray(
    tmp_path, tiny_models, own_ray, monkeypatch
):
    """The model check runs beside the start of a local Ray (start-up): when it fails after Ray is up, the job
    raises its error and stops the Ray it started (run_caption itself, not only the CLI around it)."""
    import time

    import ray

    from llava_batch.jobs import common
    from llava_batch.jobs.caption import CaptionConfig, run_caption

    seen = []

    def slow_failing_check(config):
        deadline = time.monotonic() + 120
        while not ray.is_initialized() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append(ray.is_initialized())
        raise common.ConfigError("model: the processor of 'x' does not load: broken tokenizer")

    monkeypatch.setattr(common, "checked_model", slow_failing_check)
    folder = tmp_path / "in"
    write_images(folder, 1)
    config = CaptionConfig(input=str(folder), output=str(tmp_path / "out"), model=str(tiny_models["llava"]))
    with pytest.raises(common.ConfigError, match="broken tokenizer"):
        run_caption(config)
    assert seen == [True]  # the check was still running when Ray had started
    assert not ray.is_initialized()


def test_unsupported_model_family_is_refused(tmp_path, capsys):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    folder = tmp_path / "in"
    write_images(folder, 1)
    argv = ["caption", "--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(model)]
    assert main(argv) == 2
    assert "model_type 'bert' is not a LLaVA family" in capsys.readouterr().err


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_prompt_set_with_limit_gives_one_row_per_prompt(tmp_path, tiny_models, capsys):
    folder = tmp_path / "in"
    write_images(folder, 5)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(
        "- id: short\n  text: Name it.\n  max_new_tokens: 2\n- id: long\n  text: Describe it.\n"
        "- id: what\n  text: What is in this picture?\n"
    )
    output = tmp_path / "out"
    argv = ["caption", "--input", str(folder), "--output", str(output), "--model", str(tiny_models["llava"])]
    argv += ["--prompts-file", str(prompts), "--limit", "3", "--max-new-tokens", "6"]
    assert main(argv) == 0
    rows = pq.read_table(output).to_pylist()
    expected = sorted(
        f"img-00{i}.{ext}#{p}"
        for i, ext in [(0, "png"), (1, "jpg"), (2, "png")]
        for p in ("short", "long", "what")
    )
    assert sorted(row["id"] for row in rows) == expected
    assert all(row["num_output_tokens"] <= 2 for row in rows if row["prompt_id"] == "short")
    assert {row["prompt"] for row in rows if row["prompt_id"] == "long"} == {"Describe it."}
    # `long` and `what` share decoding settings, so each image's two rows share one image prefill ("short" has
    # its own max_new_tokens and runs in a call of its own).
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["model_replicas"]["image_prefills_saved"] == 3
    assert "; 3 rows reused another row's image prefill" in capsys.readouterr().out


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_sample_selects_a_seeded_subset_and_empty_shards_are_committed(tmp_path, tiny_models):
    from llava_batch.pipeline.io.shards import ReadSpec

    folder = tmp_path / "in"
    names = write_images(folder, 8)
    argv = ["caption", "--input", str(folder), "--model", str(tiny_models["llava"]), "--max-new-tokens", "2"]
    argv += ["--sample", "0.4", "--seed", "3", "--files-per-shard", "1", "--output", str(tmp_path / "a")]
    assert main(argv) == 0
    chosen = sorted(pq.read_table(tmp_path / "a").column("id").to_pylist())
    spec = ReadSpec(sample=0.4, seed=3)
    assert chosen == sorted(name for name in names if spec.selected(name)), (
        "the same seeded choice every time"
    )
    assert 0 < len(chosen) < 8
    # Every shard has its file, the ones with nothing selected too, so a re-run has nothing left to do.
    assert len(list((tmp_path / "a").glob("part-*.parquet"))) == 8


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_too_many_errors_exit_non_zero_after_writing_everything(tmp_path, tiny_models, capsys):
    folder = tmp_path / "in"
    write_images(folder, 2)
    (folder / "bad-1.png").write_bytes(b"")
    (folder / "bad-2.png").write_bytes(b"GIF89a broken")
    output = tmp_path / "out"
    argv = ["caption", "--input", str(folder), "--output", str(output), "--model", str(tiny_models["llava"])]
    assert main(argv + ["--max-new-tokens", "2"]) == 3
    assert "2 of 4 rows (50.0%) have errors, over --max-error-rate 10.0%" in capsys.readouterr().err
    assert sorted(pq.read_table(output).column("id").to_pylist()) == [
        "bad-1.png",
        "bad-2.png",
        "img-000.png",
        "img-001.jpg",
    ]
