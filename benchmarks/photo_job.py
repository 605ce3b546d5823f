"""Benchmark: a whole caption job over 12 MP photos against the same job over 640x480 photos (issue 16).

Run: python -m benchmarks.photo_job [--images 48] [--repeats 2]

Photo-like JPEGs (benchmarks/common/inputs.py: smooth gradients, flat shapes, sensor-like noise, quality 90) at
640x480 and 4032x3024 in local folders; a tiny random LLaVA-1.5 with the public checkpoint's image geometry
(`build_tiny_model(..., geometry="real")`: CLIP ViT-L/14 at 336 px, 576 image tokens, small weights), one new
token, so the model is cheap and what the photos cost shows. Three jobs per repeat, in one local Ray started once
(its start is not timed; each job still starts its own actors): 640x480, 12 MP with reduced decoding (the
default) and 12 MP with `exact_decode=True`. Reported: each job's wall time (run_caption, start of actors
included) and its time per image. The goal: the 12 MP job at most 2x the 640x480 job.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common.inputs import write_inputs

SIZES = {"640x480": (640, 480), "12mp": (4032, 3024)}
VARIANTS = (("640x480", False), ("12mp", False), ("12mp", True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from llava_batch.jobs.caption import CaptionConfig, run_caption
    from llava_batch.pipeline.families.tiny_models import build_tiny_model
    from llava_batch.pipeline.run.ray_cluster import connect, shutdown

    seconds: dict[tuple[str, bool], list[float]] = {variant: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="llava-photo-job-") as work:
        root = Path(work)
        model = build_tiny_model("llava", root / "model", geometry="real")
        folders = {}
        for name, (width, height) in SIZES.items():
            began = time.perf_counter()
            inputs = write_inputs(root / name, args.images, width=width, height=height, seed=1)
            megabytes = sum(len(payload) for payload in inputs.payloads) / len(inputs) / 2**20
            print(
                f"wrote {args.images} {name} JPEGs ({megabytes:.2f} MB each) in {time.perf_counter() - began:.0f} s"
            )
            folders[name] = root / name
        connect(None)  # one local Ray for every job: its start is not what is measured
        try:
            for repeat in range(args.repeats):
                order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
                for size, exact in order:
                    config = CaptionConfig(
                        input=str(folders[size]),
                        output=str(root / f"out-{size}-{exact}-{repeat}"),
                        model=str(model),
                        prompt="Describe this image.",
                        max_new_tokens=1,
                        gpus_per_replica=0,
                        exact_decode=exact,
                    )
                    began = time.perf_counter()
                    result = run_caption(config)
                    elapsed = time.perf_counter() - began
                    assert result.rows == args.images and result.errors == 0, result.summary
                    seconds[(size, exact)].append(elapsed)
                    label = f"{size} {'exact' if exact else 'reduced'}"
                    print(
                        f"repeat {repeat + 1} {label:16s} {elapsed:6.1f} s, {elapsed / args.images * 1000:6.0f} ms/img",
                        flush=True,
                    )
        finally:
            shutdown()
    medians = {variant: float(np.median(values)) for variant, values in seconds.items()}
    small, reduced, exact = medians[("640x480", False)], medians[("12mp", False)], medians[("12mp", True)]
    print(f"{'job':20s} {'wall s (median)':>16s} {'ms/img':>8s} {'/ 640x480':>10s}")
    for (size, is_exact), value in medians.items():
        label = f"{size} {'exact' if is_exact else 'reduced'}"
        print(f"{label:20s} {value:16.1f} {value / args.images * 1000:8.0f} {value / small:10.2f}")
    print(
        f"SUMMARY photo_job: {args.images} images, 12 MP job {reduced:.1f} s (reduced decoding) vs 640x480 {small:.1f} s "
        f"= x{reduced / small:.2f} (goal <= x2); 12 MP with exact decoding {exact:.1f} s = x{exact / small:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
