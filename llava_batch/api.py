"""The jobs as Python calls: the same runs as the CLI's (listing, shards, commit and resume, output lock, manifest),
returning the JobResult whose counts the CLI's summary prints. The CLI is a thin layer over `run`."""

from __future__ import annotations

from typing import Any

from llava_batch.pipeline.run.runner import JobResult


def run(job: str, **settings: Any) -> JobResult:
    """Run the job named `job` (a key of llava_batch.jobs.JOBS) with `settings` (the CLI's flag names, with
    underscores). Bad settings raise llava_batch.ConfigError naming the field, before Ray starts. A Ray that was
    already running in this process (yours) is used and left running; one started here is stopped afterwards.

    The result's `errors` / `error_rate` say how many rows are error rows; the CLI exits 3 when that exceeds
    `max_error_rate`, here you decide."""
    from llava_batch.jobs import JOBS
    from llava_batch.pipeline.config import ConfigError, load_config

    if job not in JOBS:
        raise ConfigError(f"job: {job!r} is not a job; choose one of {', '.join(sorted(JOBS))}")
    return run_config(job, load_config(JOBS[job].config_class, None, settings))


def run_config(job: str, config: Any) -> JobResult:
    """Run a job from its already validated config (the CLI's path: flags and YAML make the config)."""
    from llava_batch.jobs import JOBS
    from llava_batch.pipeline.run.ray_cluster import shutdown

    try:
        return JOBS[job].run(config)
    finally:
        shutdown()


def caption(input: str, output: str, model: str, **settings: Any) -> JobResult:
    """`llava-batch caption`: one output row per input (or per input and prompt of a prompts file)."""
    return run("caption", input=input, output=output, model=model, **settings)


def instruct(input: str, output: str, model: str, **settings: Any) -> JobResult:
    """`llava-batch instruct`: LLaVA-style instruction data, one output row per parsed question."""
    return run("instruct", input=input, output=output, model=model, **settings)
