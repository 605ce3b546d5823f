"""Job files: `job:` picks the job (default caption), `schedule:` is cron, and both leave `caption --config` working."""

import pytest

from llava_batch.cli.job_files import load_job_file
from llava_batch.jobs import JOBS
from llava_batch.jobs.caption import CaptionConfig
from llava_batch.pipeline.config import ConfigError, load_config

BASE = "input: /data/in\noutput: /data/out\nmodel: /models/tiny\n"


def write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_job_and_schedule_are_read_from_the_file(tmp_path):
    job_file = load_job_file(write(tmp_path, "job: caption\nschedule: '*/10 * * * *'\n" + BASE))
    assert job_file.job == "caption" and job_file.schedule == "*/10 * * * *"
    assert isinstance(job_file.config, CaptionConfig) and job_file.config.output == "/data/out"


def test_job_defaults_to_caption_and_schedule_to_none(tmp_path):
    job_file = load_job_file(write(tmp_path, BASE))
    assert (job_file.job, job_file.schedule) == ("caption", None)


def test_caption_config_accepts_a_scheduled_job_file(tmp_path):
    # `llava-batch caption --config` runs a scheduled file once: the file keys are not settings.
    config = load_config(CaptionConfig, write(tmp_path, "job: caption\nschedule: '0 * * * *'\n" + BASE), {})
    assert config.input == "/data/in"


def test_a_file_of_another_job_is_refused_by_caption(tmp_path):
    with pytest.raises(
        ConfigError, match=r"is a 'instruct' job file, not 'caption'.*llava-batch instruct --config"
    ):
        load_config(CaptionConfig, write(tmp_path, "job: instruct\n" + BASE), {})


def test_unknown_job_and_bad_schedule_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"job: 'summarize' is not a job; choose one of caption"):
        load_job_file(write(tmp_path, "job: summarize\n" + BASE))
    with pytest.raises(ConfigError, match=r"schedule: 'every hour' has 2 field"):
        load_job_file(write(tmp_path, "schedule: every hour\n" + BASE))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['shedule'\]"):
        load_job_file(write(tmp_path, "shedule: '0 * * * *'\n" + BASE))


def test_every_job_has_a_run_function_and_a_summary():
    for kind in JOBS.values():
        assert callable(kind.run) and kind.summary


def test_schedule_refuses_a_file_without_schedule_and_a_bad_max_runs(tmp_path, capsys):
    from llava_batch.cli.main import main

    path = write(tmp_path, BASE)
    assert main(["schedule", "--config", str(path)]) == 2
    assert "has no `schedule:` key" in capsys.readouterr().err
    path = write(tmp_path, "schedule: '0 * * * *'\n" + BASE)
    assert main(["schedule", "--config", str(path), "--max-runs", "0"]) == 2
    assert "max_runs: 0 must be at least 1" in capsys.readouterr().err
