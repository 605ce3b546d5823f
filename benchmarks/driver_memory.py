"""Driver memory must not grow with the dataset: peak RSS of the driver for a 10,000-row and a 100,000-row run.

Run: python -m benchmarks.driver_memory --rows 10000 100000
Each size runs in a fresh process (the driver) on local files with a tiny random-weight model, one output
token per image; the driver reports its own peak RSS (ru_maxrss), which excludes Ray's worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common.inputs import write_png_folder

ROOT = Path(__file__).resolve().parent.parent


def child(rows: int, work: Path) -> dict:
    """Runs in its own process: the job, then this process's peak RSS."""
    from llava_batch.jobs.caption import CaptionConfig, run_caption
    from llava_batch.pipeline.families.tiny_models import build_tiny_model
    from llava_batch.pipeline.run.ray_cluster import shutdown

    model = build_tiny_model("llava", work / "model")
    write_png_folder(work / "images", rows, distinct=True)
    config = CaptionConfig(
        input=str(work / "images"),
        output=str(work / "out"),
        model=str(model),
        max_new_tokens=1,
        batch_size=64,
        files_per_shard=500,
        gpus_per_replica=0,
    )
    started = time.monotonic()
    result = run_caption(config)
    shutdown()
    return {
        "rows": rows,
        "rows_written": result.rows,
        "seconds": round(time.monotonic() - started, 1),
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        with tempfile.TemporaryDirectory(prefix="llava-batch-mem-") as work:
            print(json.dumps(child(args.rows[0], Path(work))))
        return 0
    results = []
    for rows in args.rows:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.driver_memory", "--child", "--rows", str(rows)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["driver_peak_rss_mib"]
    for result in results[1:]:
        growth = result["driver_peak_rss_mib"] / base - 1
        print(
            f"{result['rows']} rows vs {results[0]['rows']}: driver peak RSS {growth:+.1%} (bar: within +10%)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
