"""Progress while a job runs (rows, images/s, errors, ETA) and the one-screen summary at the end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("llava_batch.progress")


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class ProgressReporter:
    """Logs one line at most every `interval` seconds; rates count only rows done in this run.

    ETA comes from rows when the total is known (image folders), else from committed shards.
    """

    job: str
    total_rows: int | None
    total_shards: int
    interval: float = 5.0
    started: float = 0.0
    last_report: float = 0.0
    last_counts: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        self.started = self.last_report = time.monotonic()

    def update(self, stats: Any, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < self.interval:
            return
        counts = (stats.rows, stats.shards, stats.errors)
        if force and counts == self.last_counts:
            return  # the closing update: its line was already logged by the last regular one
        self.last_report, self.last_counts = now, counts
        elapsed = max(now - self.started, 1e-9)
        rate = stats.rows / elapsed
        if self.total_rows:
            done_share = stats.rows / self.total_rows
            rows = f"{stats.rows}/{self.total_rows} rows"
        else:
            done_share = stats.shards / self.total_shards if self.total_shards else 1.0
            rows = f"{stats.rows} rows"
        eta = format_duration(elapsed * (1 - done_share) / done_share) if done_share > 0 else "?"
        logger.info(
            "[%s] %s | %d/%d shards (%.0f%%) | %.2f img/s | errors %d | ETA %s",
            self.job,
            rows,
            stats.shards,
            self.total_shards,
            100.0 * done_share,
            rate,
            stats.errors,
            eta,
        )


def summary_text(result: Any) -> str:
    """The one-screen summary printed when a job ends (`result` is a llava_batch.pipeline.run.runner.JobResult)."""
    elapsed = result.elapsed
    rate = result.rows / elapsed if elapsed > 0 else 0.0
    token_rate = result.output_tokens / elapsed if elapsed > 0 else 0.0
    kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(result.errors_by_kind.items())) or "none"
    skipped = f"{result.skipped_shards} shard(s)"
    if result.skipped_rows is not None:
        skipped += f", {result.skipped_rows} rows"
    interrupted = getattr(result, "interrupted_by", None)
    status = f"stopped by {interrupted}; re-run the same command to resume" if interrupted else "done"
    lines = [
        f"llava-batch {result.job}: {status}",
        f"  rows written      {result.rows}",
        f"  rows with errors  {result.errors} ({kinds})",
        f"  already committed {skipped} (skipped)",
        f"  time              {format_duration(elapsed)}",
        f"  throughput        {rate:.2f} images/s, {token_rate:.1f} tokens/s",
        f"  output            {result.output_uri}",
    ]
    replica_line = replica_time_text(getattr(result, "replica_time", None))
    if replica_line:
        lines.insert(-1, replica_line)
    return "\n".join(lines)


def replica_time_text(replica_time: dict[str, Any] | None) -> str | None:
    """`model replicas: 2, busy 80.1 s, idle waiting for input 3.2 s (3.8%)`: idle near 0 means the CPU side kept
    the model fed; a large share means more preprocessing workers (or fewer replicas) would pay."""
    if not replica_time:
        return None
    saved = replica_time.get("image_prefills_saved", 0)
    filled = replica_time.get("decode_slots_filled")
    memory = replica_time.get("model_memory_bytes")
    return (
        f"  model replicas    {replica_count_text(replica_time)}: busy {replica_time['busy_s']:.1f} s, "
        f"idle waiting for input {replica_time['idle_waiting_for_input_s']:.1f} s "
        f"({100 * replica_time['idle_share']:.1f}%)"
        + (f"; decoding slots {100 * filled:.0f}% filled" if filled is not None else "")
        + (f"; {saved} rows reused another row's image prefill" if saved else "")
        + (f"; model {memory / 2**20:.1f} MiB per replica" if memory else "")
    )


def replica_count_text(replica_time: dict[str, Any]) -> str:
    """`2`, or `2 in 2 pools (1 reported its time)` when the plan's replicas and those that reported differ."""
    reported = replica_time["replicas"]
    planned = replica_time.get("replicas_planned") or reported
    pools = replica_time.get("pools") or {}
    text = str(planned)
    if len(pools) > 1:
        text += f" in {len(pools)} pools"
    if reported != planned:
        text += f" ({reported} reported {'its' if reported == 1 else 'their'} time)"
    return text
