"""How many rows one driver core can commit: driver CPU per output row of a caption run whose model costs nothing.

Run: python -m benchmarks.driver_ceiling                      (5,000 and 20,000 rows, tiny model, a few minutes)
     python -m benchmarks.driver_ceiling --rows 5000 20000 50000 --stand-in
Each size runs in a fresh driver process on local 16x16 PNG files. `--stand-in` replaces preprocessing and the
model with an operator that answers every row at once (the driver's work per row is the same: it gathers,
checks and commits every row); without it the tiny random-weight LLaVA-1.5 writes one token per image.
Driver CPU is this process's own user+sys time (getrusage RUSAGE_SELF: Ray's workers, raylet and GCS excluded)
spent inside run_caption; the marginal cost per row comes from the difference between two sizes, so start-up
costs (Ray, listing, the model check) cancel out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common.inputs import write_png_folder

ROOT = Path(__file__).resolve().parent.parent

IMAGES_PER_S_PER_GPU = 50.0  # what one GPU replica of a 7B LLaVA captions, roughly (BENCHMARKS.md, GPU runs)
GOAL_ROWS_PER_CORE_S = 10_000.0


class StandInGenerate:
    """Answers every row with one fixed token, without preprocessing or a model: the driver sees the columns
    a replica would send it."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["id"])
        out = {
            name: batch[name] for name in ("id", "source", "prompt", "prompt_id", "shard_id", "shard_rows")
        }
        error = batch.get("error")
        out["generated_text"] = np.array(["a"] * rows, dtype=object)
        out["num_input_tokens"] = np.full(rows, 10, dtype=np.int64)
        out["num_output_tokens"] = np.full(rows, 1, dtype=np.int64)
        out["finish_reason"] = np.array(["length"] * rows, dtype=object)
        out["model"] = np.array(["stand-in"] * rows, dtype=object)
        out["error"] = error if error is not None else np.array([None] * rows, dtype=object)
        return out


def use_stand_in() -> None:
    """The caption recipe, with its preprocess and generate pools swapped for one stand-in pool."""
    import llava_batch.jobs.caption as caption
    from llava_batch.pipeline.run.stages import Stage

    def stand_in_stages(config: Any, model: Any, shares: Any, gpus: int, **_: Any) -> list[Stage]:
        return [
            Stage(
                "generate",
                StandInGenerate,
                batch_size=config.batch_size * config.length_window,
                num_cpus=shares.generate,
                pool=(1, config.replicas.max),
            )
        ]

    caption.model_call_stages = stand_in_stages


def child(rows: int, work: Path, stand_in: bool, batch_size: int, files_per_shard: int) -> dict:
    """Runs in its own process (the driver): the job, then this process's CPU, wall time and RSS."""
    from llava_batch.jobs.caption import CaptionConfig, run_caption
    from llava_batch.pipeline.families.tiny_models import build_tiny_model
    from llava_batch.pipeline.run import commit
    from llava_batch.pipeline.run.ray_cluster import shutdown

    if stand_in:
        use_stand_in()
    model = build_tiny_model("llava", work / "model")
    write_png_folder(work / "images", rows, distinct=False)
    # The committer's own CPU (main thread), to tell it from Ray Data's executor and block fetching.
    committer_cpu = [0.0]
    add = commit.ShardCommitter.add

    def timed_add(self: commit.ShardCommitter, table: Any) -> None:
        started = time.thread_time()
        add(self, table)
        committer_cpu[0] += time.thread_time() - started

    commit.ShardCommitter.add = timed_add
    config = CaptionConfig(
        input=str(work / "images"),
        output=str(work / "out"),
        model=str(model),
        max_new_tokens=1,
        batch_size=batch_size,
        files_per_shard=files_per_shard,
        gpus_per_replica=0,
    )
    sampler = ThreadSampler()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    result = run_caption(config)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    spent = sampler.stop()
    threads = sorted(spent.items(), key=lambda item: -item[1])[:6]
    shutdown()
    # The sampler's own CPU is the benchmark's, not the driver's.
    cpu = (
        (after.ru_utime - before.ru_utime)
        + (after.ru_stime - before.ru_stime)
        - spent.get("ceiling-sampler", 0)
    )
    return {
        "rows": rows,
        "rows_written": result.rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(result.rows / seconds, 1),
        "driver_cpu_s": round(cpu, 3),
        "committer_cpu_s": round(committer_cpu[0], 3),
        "driver_peak_rss_mib": round(after.ru_maxrss / 1024, 1),
        "main_thread_cpu_s": round(spent.get("MainThread", 0.0), 3),
        "busiest_threads_cpu_s": {name: round(seconds, 2) for name, seconds in threads},
    }


class ThreadSampler:
    """CPU seconds of each of this process's threads (Linux /proc), sampled every `interval` seconds so that
    threads which end before the run does (Ray Data's executor) are still counted. Python threads go by their
    threading name, others by their kernel name."""

    def __init__(self, interval: float = 0.5) -> None:
        import threading

        self.interval = interval
        self.last: dict[str, tuple[str, float]] = {}  # tid -> (name, CPU seconds)
        self.start_cpu = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ceiling-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> dict[str, tuple[str, float]]:
        import threading

        python_names = {str(thread.native_id): thread.name for thread in threading.enumerate()}
        tick = os.sysconf("SC_CLK_TCK")
        seen = {}
        for tid in os.listdir("/proc/self/task"):
            try:
                name = python_names.get(tid) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seen[tid] = (name, (int(fields[11]) + int(fields[12])) / tick)
        self.last.update(seen)
        return seen

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, float]:
        """CPU seconds spent since the sampler started, by thread name (numbers stripped from names)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        totals: dict[str, float] = {}
        for tid, (name, cpu) in self.last.items():
            key = re.sub(r"-dataset_\w+$|[-_]?\d+$", "", name) or name
            spent = cpu - self.start_cpu.get(tid, (name, 0.0))[1]
            totals[key] = totals.get(key, 0.0) + spent
        return totals


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000, 20_000])
    parser.add_argument("--stand-in", action="store_true", help="no preprocessing and no model (see above)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--files-per-shard", type=int, default=500)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        with tempfile.TemporaryDirectory(prefix="llava-batch-ceiling-") as work:
            result = child(args.rows[0], Path(work), args.stand_in, args.batch_size, args.files_per_shard)
            print(json.dumps(result))
        return 0
    results = []
    for rows in args.rows:
        command = [sys.executable, "-m", "benchmarks.driver_ceiling", "--child", "--rows", str(rows)]
        command += ["--batch-size", str(args.batch_size), "--files-per-shard", str(args.files_per_shard)]
        done = subprocess.run(
            command + (["--stand-in"] if args.stand_in else []), capture_output=True, text=True, cwd=ROOT
        )
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            return done.returncode
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["driver_cpu_ms_per_row"] = round(1000 * result["driver_cpu_s"] / result["rows_written"], 4)
        results.append(result)
        print(json.dumps(result), flush=True)
    first, last = results[0], results[-1]
    # Marginal driver CPU per row: start-up (Ray, listing, model check) cancels out between two sizes.
    extra_rows = last["rows_written"] - first["rows_written"]
    if extra_rows > 0:
        per_row = (last["driver_cpu_s"] - first["driver_cpu_s"]) / extra_rows
        committer_per_row = (last["committer_cpu_s"] - first["committer_cpu_s"]) / extra_rows
        main_per_row = (last["main_thread_cpu_s"] - first["main_thread_cpu_s"]) / extra_rows
    else:
        per_row = last["driver_cpu_s"] / last["rows_written"]
        committer_per_row = last["committer_cpu_s"] / last["rows_written"]
        main_per_row = last["main_thread_cpu_s"] / last["rows_written"]
    ceiling = 1.0 / per_row if per_row > 0 else float("inf")
    gpus = ceiling / IMAGES_PER_S_PER_GPU
    print(
        f"SUMMARY driver_ceiling: {'stand-in' if args.stand_in else 'tiny model'}, rows {args.rows}: "
        f"driver CPU {per_row * 1000:.4f} ms/row marginal (main thread {main_per_row * 1000:.4f}, of it committer {committer_per_row * 1000:.4f}) "
        f"-> {ceiling:,.0f} rows/s per driver core (goal {GOAL_ROWS_PER_CORE_S:,.0f}: "
        f"{'met' if ceiling >= GOAL_ROWS_PER_CORE_S else 'NOT met'}); one driver feeds {gpus:,.0f} GPUs at "
        f"{IMAGES_PER_S_PER_GPU:g} img/s each; largest run {last['rows_per_s']:,.0f} rows/s wall, driver peak RSS "
        f"{last['driver_peak_rss_mib']} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
