"""The jobs users run, in one table. The CLI's subcommands and their help, a job file's `job:` key and the Python
API (`llava_batch.caption`, `llava_batch.instruct`) all come from JOBS: a new job is one module and one entry here.

Importing this pulls in the jobs' modules, which import neither torch nor Ray (they load when a run starts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llava_batch.jobs.caption import CaptionConfig, run_caption
from llava_batch.jobs.instruct import InstructConfig, run_instruct


@dataclass(frozen=True)
class Job:
    config_class: type
    run: Callable[[Any], Any]  # config -> llava_batch.pipeline.run.runner.JobResult
    summary: str  # one line for `llava-batch --help`


JOBS: dict[str, Job] = {
    "caption": Job(CaptionConfig, run_caption, "caption every image (or group of images) of the input"),
    "instruct": Job(
        InstructConfig,
        run_instruct,
        "make LLaVA-style instruction data: the model asks questions per image, then answers them",
    ),
}
DEFAULT_JOB = "caption"
