"""Job YAML files: which job a file runs (`job:`, default caption), its optional `schedule:`, and its config.

JOBS maps each job name to its config class and run function, in one place: a new job is one line here.
The run functions are named as strings and imported only when a run starts (they pull in torch and Ray), so
`--help` stays fast; the config classes are light and imported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_batch.cli.cron import CronError, parse_cron
from llava_batch.jobs import DEFAULT_JOB, JOBS
from llava_batch.pipeline.config import ConfigError, load_config, read_yaml_mapping

# Keys of a job file that belong to the file, not to the job's config (load_config leaves them out).
FILE_KEYS = ("job", "schedule")


@dataclass(frozen=True)
class JobFile:
    path: Path
    job: str
    schedule: str | None
    config: Any


def load_job_file(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> JobFile:
    """Read and validate a whole job file: its job name, its schedule (if any) and its config."""
    raw = read_yaml_mapping(path)
    job = raw.get("job", DEFAULT_JOB)
    if job not in JOBS:
        raise ConfigError(f"job: {job!r} is not a job; choose one of {', '.join(sorted(JOBS))}")
    schedule = raw.get("schedule")
    if schedule is not None:
        try:
            parse_cron(schedule)
        except CronError as error:
            raise ConfigError(str(error)) from None
    config = load_config(JOBS[job].config_class, path, overrides or {})
    return JobFile(Path(path), job, None if schedule is None else str(schedule), config)
