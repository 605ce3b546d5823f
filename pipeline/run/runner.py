"""Run a job: skip committed shards, stream the rest through the stages, commit per shard, write the manifest.

The driver only holds shard descriptors and the rows of shards still in flight, so its memory does not grow
with the dataset.
"""

from __future__ import annotations

import json
import logging
import platform
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.shards import Shard
from llava_batch.pipeline.io.storage import StorageOptions, join_uri, write_text
from llava_batch.pipeline.run.commit import (
    ShardCommitter,
    check_job_identity,
    committed_shard_ids,
    remove_parts,
    remove_temporary_files,
)
from llava_batch.pipeline.run.output_lock import OutputLock
from llava_batch.pipeline.run.progress import ProgressReporter, summary_text
from llava_batch.pipeline.run.stages import Stage, apply_stages, scale_up_limits

logger = logging.getLogger(__name__)

MANIFEST_FILE = "_manifest.json"


@dataclass
class JobPlan:
    """What to run: the shards of input, the stages in order (the first one reads), where results go."""

    job: str
    output_uri: str
    options: StorageOptions
    shards: list[Shard]
    stages: list[Stage]
    fingerprint: dict[str, Any]
    # Values a setting missing from an older `_job.json` is taken to have had (llava_batch.pipeline.config.fingerprint_defaults).
    fingerprint_defaults: dict[str, Any] = field(default_factory=dict)
    # Output rows per input; None when the job learns it while running (instruct: one row per parsed question).
    rows_per_input: int | None = 1
    overwrite: bool = False
    # A --limit/--sample trial: it may replace an earlier trial's parts, never another run's (see _run_job_locked).
    trial: bool = False
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    # Gathered rows of a shard -> its output table (default: the caption columns, llava_batch.pipeline.run.commit).
    output_table: Callable[[pa.Table], pa.Table] | None = None


@dataclass
class JobResult:
    job: str
    output_uri: str
    rows: int
    errors: int
    errors_by_kind: dict[str, int]
    skipped_shards: int
    skipped_rows: int | None
    elapsed: float
    output_tokens: int
    # Model replicas' busy and idle seconds (llava_batch.pipeline.run.commit.ReplicaTime.to_dict); empty when none ran.
    replica_time: dict[str, Any] = field(default_factory=dict)
    # The signal's name when the run was stopped (SIGINT, SIGTERM) before it finished; the counts are so far.
    interrupted_by: str | None = None

    @property
    def summary(self) -> str:
        return summary_text(self)

    @property
    def error_rate(self) -> float:
        return self.errors / self.rows if self.rows else 0.0


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run stops where it is (committed shards stay, the lock is released)."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


class JobInterrupted(Exception):
    """Raised out of run_job when a signal stopped it; `result` holds the counts so far, for the summary."""

    def __init__(self, result: JobResult, signal_number: int) -> None:
        super().__init__(f"{result.job} interrupted by {result.interrupted_by}")
        self.result = result
        self.signal_number = signal_number


def run_job(plan: JobPlan) -> JobResult:
    """Run the plan while holding the output's lock, so that two runs (two cron ticks) never write one output."""
    with OutputLock(plan.output_uri, plan.options):
        return _run_job_locked(plan)


def _run_job_locked(plan: JobPlan) -> JobResult:
    import ray.data

    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    # 1. Decide what is left to do from one listing of the output.
    if plan.overwrite:
        remove_parts(plan.output_uri, committed_shard_ids(plan.output_uri, plan.options), plan.options)
    check_job_identity(
        plan.output_uri,
        plan.fingerprint,
        plan.options,
        overwrite=plan.overwrite,
        defaults=plan.fingerprint_defaults,
    )
    remove_temporary_files(plan.output_uri, plan.options)
    committed = committed_shard_ids(plan.output_uri, plan.options)
    planned = {shard.shard_id for shard in plan.shards}
    # Parts of shards no longer in the plan (regrouped or removed inputs, the shards of a --limit/--sample trial
    # run) hold ids this run writes again: removed before any new part is written, so that the output never
    # holds an id twice, not even while this run goes on or after it is killed.
    stale = committed - planned
    if stale and plan.trial:
        # The parts could be a full run's: a trial over them would delete hours of results to redo ten rows.
        raise ConfigError(
            f"output: {plan.output_uri!r} holds {len(stale)} part(s) of shards this trial run (--limit/--sample) "
            "does not select; a trial never removes other results. Write it to another output, or pass --overwrite"
        )
    if stale:
        logger.info("removing %d output part(s) whose input shards are not in this run's plan", len(stale))
        remove_parts(plan.output_uri, stale, plan.options)
        committed -= stale
    todo = [shard for shard in plan.shards if shard.shard_id not in committed]
    skipped = [shard for shard in plan.shards if shard.shard_id in committed]
    # Row counts are known up front only for image folders; tars and tables are counted as they are read.
    known = plan.rows_per_input is not None and all(shard.kind == "images" for shard in plan.shards)
    per_input = plan.rows_per_input or 1
    skipped_rows = sum(len(shard.members) for shard in skipped) * per_input if known else None
    total_rows = sum(len(shard.members) for shard in todo) * per_input if known else None
    logger.info(
        "%s: %d shard(s) to do (%s), %d already committed",
        plan.job,
        len(todo),
        "rows counted as they arrive" if total_rows is None else f"{total_rows} rows",
        len(skipped),
    )

    # 2. Stream the missing shards through the stages; commit each shard when its last row arrives.
    committer = ShardCommitter(plan.output_uri, plan.options, plan.output_table)
    if todo:
        progress = ProgressReporter(plan.job, total_rows=total_rows, total_shards=len(todo))
        items = [shard.to_item() for shard in todo]
        limit_scale_up(plan.stages)
        dataset = apply_stages(ray.data.from_items(items, override_num_blocks=len(items)), plan.stages)
        try:
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                committer.add(table)
                progress.update(committer.stats)
        except KeyboardInterrupt as interrupt:  # committed shards stay; a re-run does the rest
            number = getattr(interrupt, "signal_number", signal.SIGINT)
            result = job_result(plan, committer, skipped, skipped_rows, started)
            result.interrupted_by = signal.Signals(number).name
            raise JobInterrupted(result, number) from interrupt
        progress.update(committer.stats, force=True)
    incomplete = committer.incomplete_shards()
    if incomplete:
        raise RuntimeError(
            f"{len(incomplete)} shard(s) did not receive all their rows and were not committed: "
            f"{dict(list(incomplete.items())[:5])}; re-run the same command to redo them"
        )

    result = job_result(plan, committer, skipped, skipped_rows, started)
    # 3. The manifest is written last: its presence says this run finished.
    write_manifest(plan, result, started_at)
    return result


def limit_scale_up(stages: list[Stage]) -> None:
    """Keep Ray Data from asking an autoscaling cluster for nodes the plan does not use (stages.scale_up_limits).
    The job's driver owns this process's DataContext; a caller's own pipeline (llava_batch.processor) is left as is."""
    import ray
    import ray.data

    cpus, gpus = scale_up_limits(stages, float(ray.cluster_resources().get("CPU", 0)))
    options = ray.data.DataContext.get_current().execution_options
    options.resource_limits = options.resource_limits.copy(cpu=cpus, gpu=gpus)
    logger.debug("Ray Data may hold up to %g CPUs and %g GPUs", cpus, gpus)


def job_result(
    plan: JobPlan, committer: ShardCommitter, skipped: list[Shard], skipped_rows: int | None, started: float
) -> JobResult:
    stats = committer.stats
    return JobResult(
        job=plan.job,
        output_uri=plan.output_uri,
        rows=stats.rows,
        errors=stats.errors,
        errors_by_kind=dict(stats.errors_by_kind),
        skipped_shards=len(skipped),
        skipped_rows=skipped_rows,
        elapsed=time.monotonic() - started,
        output_tokens=stats.output_tokens,
        replica_time=stats.replicas.to_dict() | model_pools(plan) if stats.replicas.replica_ids else {},
    )


def model_pools(plan: JobPlan) -> dict[str, Any]:
    """The replicas the plan asked for, per model pool (instruct has one pool per model call): the replicas
    that reported their time can be fewer (a replica that got no batch, or a pool whose stats a later pool's
    replaced on the rows)."""
    pools = {stage.name: stage.pool[1] for stage in plan.stages if stage.name.startswith("generate")}
    return {"replicas_planned": sum(pools.values()), "pools": pools}


def write_manifest(plan: JobPlan, result: JobResult, started_at: datetime) -> None:
    manifest = {
        "job": plan.job,
        "settings": plan.fingerprint,
        **plan.manifest_extra,
        "versions": package_versions(),
        "counts": {
            "shards_total": len(plan.shards),
            "shards_skipped": result.skipped_shards,
            "rows_written": result.rows,
            "rows_skipped": result.skipped_rows,
            "output_tokens": result.output_tokens,
            "errors": result.errors,
            "errors_by_kind": result.errors_by_kind,
        },
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "elapsed_s": round(result.elapsed, 3),
        "images_per_s": round(result.rows / result.elapsed, 3) if result.elapsed > 0 else None,
        "model_replicas": result.replica_time or None,
    }
    write_text(
        join_uri(plan.output_uri, MANIFEST_FILE), json.dumps(manifest, indent=2, default=str), plan.options
    )


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in ("llava-batch", "torch", "transformers", "accelerate", "ray", "pyarrow", "pillow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
