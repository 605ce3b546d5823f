"""Progress while a job runs (rows, images/s, errors, ETA) and the one-screen summary at the end."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

logger = logging.getLogger("llava_batch.progress")


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class ProgressReporter:
    """Logs one line at most every `interval` seconds; rates count only rows done in this run."""

    job: str
    total_rows: int
    interval: float = 5.0
    started: float = 0.0
    last_report: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.last_report = time.monotonic()

    def update(self, rows_done: int, errors: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_report < self.interval:
            return
        self.last_report = now
        elapsed = now - self.started
        rate = rows_done / elapsed if elapsed > 0 else 0.0
        remaining = self.total_rows - rows_done
        eta = format_duration(remaining / rate) if rate > 0 else "?"
        share = 100.0 * rows_done / self.total_rows if self.total_rows else 100.0
        logger.info(
            "[%s] %d/%d rows (%.0f%%) | %.2f img/s | errors %d | ETA %s",
            self.job,
            rows_done,
            self.total_rows,
            share,
            rate,
            errors,
            eta,
        )


def summary_text(
    *,
    job: str,
    rows: int,
    errors: int,
    errors_by_kind: dict[str, int],
    skipped_rows: int,
    elapsed: float,
    output_tokens: int,
    output_uri: str,
) -> str:
    rate = rows / elapsed if elapsed > 0 else 0.0
    kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(errors_by_kind.items())) or "none"
    lines = [
        f"llava-batch {job}: done",
        f"  rows written      {rows}",
        f"  rows with errors  {errors} ({kinds})",
        f"  already committed {skipped_rows} (skipped)",
        f"  time              {format_duration(elapsed)}",
        f"  throughput        {rate:.2f} images/s, {output_tokens / elapsed if elapsed > 0 else 0:.1f} tokens/s",
        f"  output            {output_uri}",
    ]
    return "\n".join(lines)
