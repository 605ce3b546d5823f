"""Run a job file on its cron schedule: sleep until the next fire time, run, log the result, repeat.

Each run is incremental by construction: the output's committed shards are skipped, so a run processes only
the input shards that arrived since the last one. The output lock (llava_batch.pipeline.run.output_lock, taken by every run)
makes a run that would overlap the previous one stop at once instead of racing it; the scheduler logs it and
waits for the next tick.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from llava_batch.cli.cron import next_fire_time
from llava_batch.cli.job_files import JobFile
from llava_batch.pipeline.config import ConfigError

logger = logging.getLogger(__name__)

# Long sleeps are cut into slices so that a changed system clock (suspend, NTP step) is noticed.
SLEEP_SLICE_S = 60.0


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def sleep_until(moment: datetime) -> None:
    while True:
        left = (moment - utc_now()).total_seconds()
        if left <= 0:
            return
        time.sleep(min(left, SLEEP_SLICE_S))


def run_schedule(job_file: JobFile, run_once: Callable[[], int], *, max_runs: int | None = None) -> int:
    """Loop over the schedule's fire times; returns the exit code of the last run (after `max_runs` runs)."""
    if not job_file.schedule:
        raise ConfigError(
            f'schedule: {str(job_file.path)!r} has no `schedule:` key; add one (e.g. schedule: "0 * * * *" '
            "for every hour, UTC) or run it once with `llava-batch schedule --once`"
        )
    runs, code = 0, 0
    while max_runs is None or runs < max_runs:
        fire_at = next_fire_time(job_file.schedule, utc_now())
        logger.info(
            "%s: next run at %s (schedule %r)", job_file.path.name, fire_at.isoformat(), job_file.schedule
        )
        sleep_until(fire_at)
        started = time.monotonic()
        code = run_once()
        runs += 1
        outcome = "succeeded" if code == 0 else f"failed with exit code {code}"
        logger.info(
            "%s: run %d (due %s) %s after %.1fs",
            job_file.path.name,
            runs,
            fire_at.isoformat(),
            outcome,
            time.monotonic() - started,
        )
    return code
