"""Benchmark: start-up, from the command to the first committed row: the demo against the same work in one process.

Run: python -m benchmarks.startup [--repeats 3] [--timeline]

  - demo: `python -m llava_batch.jobs.demo --out DIR` as a fresh process (a private local Ray, the built-in trained
    LLaVA-1.5, 12 images); the time from launching it until the first `part-*.parquet` appears in DIR/captions
    (polled every 10 ms: the first committed row), and until it exits.
  - single process: a fresh process running the same operators in a plain loop over the same 12 images
    (`PreprocessForModel`, `Generate`, one Parquet file per row, one torch thread as a replica gets); the time from
    launching it until its first row's Parquet file appears, and until it exits.

Variants alternate, each repeat a fresh process of each. `--timeline` prints the demo's log lines of the first repeat
with their time since launch (where its start-up goes). The goal (issue 16): demo <= 2x the single process, to the
first row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SINGLE_PROCESS = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.generation.replica import Generate
images, out, prompt = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
preprocess = PreprocessForModel("builtin:llava", max_image_pixels=64_000_000)
generate = Generate("builtin:llava", generate_kwargs={"max_new_tokens": 16}, dtype="float32")
for index, path in enumerate(sorted(images.glob("*.png"))):
    batch = {"id": np.array([path.name], dtype=object), "image_bytes": np.array([path.read_bytes()], dtype=object),
             "prompt": np.array([prompt], dtype=object)}
    row = generate(preprocess(batch))
    table = pa.table({"id": [path.name], "generated_text": [row["generated_text"][0]]})
    pq.write_table(table, out / f"part-{index:05d}.tmp")
    (out / f"part-{index:05d}.tmp").rename(out / f"part-{index:05d}.parquet")
"""


def run_until_first_part(command: list[str], parts: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds to the first part-*.parquet under `parts`, seconds to exit, stderr) of one fresh process."""
    began = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    first = None
    stderr_lines: list[str] = []

    def read() -> None:  # each line stamped with its arrival: worker lines carry no time of their own
        for line in process.stderr:
            stderr_lines.append(f"{time.perf_counter() - began:7.2f} s  {line}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while process.poll() is None:
        if first is None and parts.is_dir() and any(parts.glob("part-*.parquet")):
            first = time.perf_counter() - began
        time.sleep(0.01)
    finished = time.perf_counter() - began
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited {process.returncode}:\n{''.join(stderr_lines)[-3000:]}")
    if first is None:  # appeared in the last poll interval
        first = finished if any(parts.glob("part-*.parquet")) else float("nan")
    return first, finished, "".join(stderr_lines)


def timeline(stderr: str, width: int = 160) -> list[str]:
    """The process's stderr lines (progress bars dropped) with their seconds since launch."""
    return [line[:width] for line in stderr.splitlines() if line.strip() and "it/s]" not in line]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeline", action="store_true", help="print the demo's log lines with their times")
    args = parser.parse_args(argv)
    from llava_batch.jobs.demo import write_demo_images

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[str, list[tuple[float, float]]] = {"demo": [], "single process": []}
    with tempfile.TemporaryDirectory(prefix="llava-startup-") as work:
        images = Path(work) / "images"
        prompt, _ = write_demo_images(images)
        for repeat in range(args.repeats):
            order = ("demo", "single process") if repeat % 2 == 0 else ("single process", "demo")
            for variant in order:
                out = Path(work) / f"{variant.replace(' ', '-')}-{repeat}"
                if variant == "demo":
                    command = [sys.executable, "-m", "llava_batch.jobs.demo", "--out", str(out)]
                    parts = out / "captions"
                else:
                    out.mkdir()
                    command = [sys.executable, "-c", SINGLE_PROCESS, str(images), str(out), prompt]
                    parts = out
                first, finished, stderr = run_until_first_part(command, parts, env)
                results[variant].append((first, finished))
                print(
                    f"repeat {repeat + 1} {variant:15s} first row {first:6.2f} s, exit {finished:6.2f} s",
                    flush=True,
                )
                if variant == "demo" and repeat == 0 and args.timeline:
                    print("\n".join(timeline(stderr)), flush=True)
    demo_first = float(np.median([first for first, _ in results["demo"]]))
    single_first = float(np.median([first for first, _ in results["single process"]]))
    demo_exit = float(np.median([finished for _, finished in results["demo"]]))
    single_exit = float(np.median([finished for _, finished in results["single process"]]))
    ratios = [demo[0] / single[0] for demo, single in zip(results["demo"], results["single process"])]
    print(f"{'':15s} {'first row s (median)':>21s} {'exit s (median)':>16s}")
    print(f"{'demo':15s} {demo_first:21.2f} {demo_exit:16.2f}")
    print(f"{'single process':15s} {single_first:21.2f} {single_exit:16.2f}")
    print(
        f"SUMMARY startup: first row demo {demo_first:.1f} s vs single process {single_first:.1f} s, "
        f"x{float(np.median(ratios)):.2f} (per repeat: {', '.join(f'x{ratio:.2f}' for ratio in ratios)}; goal <= x2)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
