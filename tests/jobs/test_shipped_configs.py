"""Every shipped example config opens with the command that runs it, that command parses, and the config runs.

The local config runs exactly as its first line says (from a checkout after `make demo`); the cluster configs
run with only what cannot exist offline substituted (S3 input and output -> local folders, hub model -> the
built-in checkpoint of its family, cluster resources -> one CPU replica). One run per job kind: the caption
configs differ only in settings, so the others are loaded with the same substitutions but not run again.
"""

import json
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llava_batch.cli.job_files import load_job_file
from llava_batch.cli.main import build_parser, main, run_job
from llava_batch.jobs import JOBS
from llava_batch.jobs.demo import write_demo_images
from tests.support.images import write_images

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
LOCAL_CONFIG = ROOT / "jobs" / "configs" / "caption_local.yaml"
RUN_LIMIT = 3


def test_there_are_example_configs():
    assert len(CONFIGS) >= 2
    assert {path.name.split("_", 1)[0] for path in CONFIGS} == set(JOBS)


def first_line_command(path: Path) -> list[str]:
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# Run: llava-batch ")
    return shlex.split(first_line.removeprefix("# Run: llava-batch "))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_opens_with_its_command_and_validates(path):
    argv = first_line_command(path)
    assert argv[argv.index("--config") + 1] == f"jobs/configs/{path.name}"
    # The command is one this CLI accepts (a renamed flag or subcommand would fail here).
    args = build_parser().parse_args(argv)
    assert args.command in (*JOBS, "run", "schedule", "submit")
    if args.command in JOBS:
        job_file = load_job_file(path)
        assert args.command == job_file.job, "the first line runs the job the file declares"
    # The job named in the file (default caption) picks the config class; `schedule:` is checked as cron.
    job_file = load_job_file(path)
    assert path.name.startswith(f"{job_file.job}_"), "name a config after the job it runs"
    assert isinstance(job_file.config, JOBS[job_file.job].config_class)
    config = job_file.config
    assert config.model and config.input and config.output


def test_a_scheduled_example_is_shipped():
    assert any(load_job_file(path).schedule for path in CONFIGS)


def builtin_for(model: str) -> str:
    """The built-in checkpoint of a hub model's family (LLaVA-NeXT is v1.6)."""
    return "builtin:llava_next" if "v1.6" in model or "next" in model.lower() else "builtin:llava"


def offline_overrides(path: Path, workdir: Path) -> dict:
    """Substitute only what cannot exist offline; every other setting is the file's own."""
    raw = load_job_file(path).config
    overrides = {
        "input": str(workdir / "images"),
        "output": str(workdir / "out"),
        "model": str(builtin_for(raw.model)),
        "replicas": "1",
        "gpus_per_replica": 0,
        "preprocess_workers": 1,
        "limit": RUN_LIMIT,
    }
    if getattr(raw, "export_json", None):
        overrides["export_json"] = str(workdir / "export.json")
    return overrides


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_cluster_configs_load_with_offline_substitutions(path, tmp_path):
    config = load_job_file(path, offline_overrides(path, tmp_path)).config
    assert config.model.startswith("builtin:") and config.limit == RUN_LIMIT


@pytest.mark.integration
@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_the_local_config_runs_as_its_first_line_says(tmp_path, monkeypatch, capsys):
    # A checkout after `make demo`: the configs and out/demo-images, run from its root (the model is builtin:llava).
    (tmp_path / "jobs" / "configs").mkdir(parents=True)
    (tmp_path / "jobs" / "configs" / LOCAL_CONFIG.name).write_text(LOCAL_CONFIG.read_text())
    _, expected = write_demo_images(tmp_path / "out" / "demo-images")
    monkeypatch.chdir(tmp_path)
    assert main([*first_line_command(LOCAL_CONFIG), "--limit", str(RUN_LIMIT)]) == 0
    rows = pq.read_table(tmp_path / "out" / "captions-local").to_pylist()
    assert sorted(row["id"] for row in rows) == sorted(expected)[:RUN_LIMIT]
    assert all(row["error"] is None for row in rows)
    # The built-in model answers the demo's prompt: at least most captions are the true ones.
    correct = sum(row["generated_text"] == expected[row["id"]] for row in rows)
    assert correct >= RUN_LIMIT - 1, rows
    assert "rows written      3" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.slow  # three model pools at once; tests/jobs/test_instruct.py covers the job itself
def test_the_instruct_config_runs_offline(tmp_path):
    path = next(path for path in CONFIGS if path.name.startswith("instruct_"))
    names = write_images(tmp_path / "images", RUN_LIMIT + 1)
    # Shorter replies keep the three model calls of two turns quick on CPU; every other setting is the file's.
    overrides = offline_overrides(path, tmp_path) | {"max_new_tokens": 8, "question_max_new_tokens": 48}
    job_file = load_job_file(path, overrides)
    assert run_job(job_file.job, job_file.config) == 0
    rows = pq.read_table(tmp_path / "out").to_pylist()
    # One row per parsed question, each image at least once, only the first RUN_LIMIT images.
    assert {row["id"].rsplit("#", 1)[0] for row in rows} <= set(sorted(names)[:RUN_LIMIT])
    assert len({row["image"] for row in rows}) == RUN_LIMIT
    exported = json.loads((tmp_path / "export.json").read_text())
    assert len(exported) == sum(row["error"] is None for row in rows)
