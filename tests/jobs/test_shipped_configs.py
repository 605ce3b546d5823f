"""Every shipped example config opens with the command that runs it and loads without errors."""

from pathlib import Path

import pytest

from pipeline.job_files import JOBS, load_job_file

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert len(CONFIGS) >= 2
    assert {path.name.split("_", 1)[0] for path in CONFIGS} == set(JOBS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_opens_with_its_command_and_validates(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# Run: llava-batch ")
    assert f"--config jobs/configs/{path.name}" in first_line
    # The job named in the file (default caption) picks the config class; `schedule:` is checked as cron.
    job_file = load_job_file(path)
    assert path.name.startswith(f"{job_file.job}_"), "name a config after the job it runs"
    assert isinstance(job_file.config, JOBS[job_file.job].config_class)
    config = job_file.config
    assert config.model and config.input and config.output


def test_a_scheduled_example_is_shipped():
    assert any(load_job_file(path).schedule for path in CONFIGS)
