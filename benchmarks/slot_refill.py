"""Benchmark: how full the continuous-batching slots stay, and at what speed, by refill rule and length window.

Run: python -m benchmarks.slot_refill [--batch-size 8] [--images 64] [--new-tokens 128] [--windows 4 8]
     [--refill-fractions 0.25 0]   (about 8 minutes on 2 shared cores with the defaults)

The operator alone (PreprocessForModel + Generate, as in generation_vs_peers.py: the same CPU-sized random
LLaVA-1.5, float32, greedy, 1 torch thread) on the same rows once per setting, with captions of varied length:
each row stops at a probed stop token, at most --new-tokens. A refill fraction f admits waiting rows once
f x slots are free (llava_batch.operators.generation.continuous_batching.REFILL_FRACTION; 0 means at every free slot). Each line prints
the operator's seconds per image (its generate calls), live rows per decoding step, and whether its texts equal
the first setting's (they must: the rule changes when rows join, not what they generate).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

import llava_batch.operators.generation.continuous_batching as continuous
from benchmarks.common.inputs import MAX_IMAGE_PIXELS, write_inputs
from benchmarks.common.models import build_checkpoint
from benchmarks.common.report import token_spread
from benchmarks.common.variants import run_operator, varied_length_kwargs
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--windows", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--refill-fractions", nargs="+", type=float, default=[0.25, 0.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.images < 1 or args.new_tokens < 1 or min(args.windows) < 1:
        parser.error("--batch-size, --images, --new-tokens and --windows must be at least 1")
    if not all(0 <= fraction <= 1 for fraction in args.refill_fractions):
        parser.error("--refill-fractions: 0 to 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    kept = continuous.REFILL_FRACTION
    with tempfile.TemporaryDirectory(prefix="llava-slot-bench-") as work:
        checkpoint, _ = build_checkpoint(Path(work) / "model", args.seed)
        operator = Generate(str(checkpoint), generate_kwargs={}, dtype="float32")
        preprocess = PreprocessForModel(str(checkpoint), max_image_pixels=MAX_IMAGE_PIXELS)
        inputs = write_inputs(Path(work) / "images", args.images, seed=args.seed)
        operator.generate_kwargs = varied_length_kwargs(
            operator.model, preprocess.processor, inputs, args.new_tokens
        )
        print(
            f"slot_refill: batch {args.batch_size}, {args.images} images, {operator.generate_kwargs}",
            flush=True,
        )
        run_operator(preprocess, operator, inputs.head(2), 2)  # warm-up
        reference: list[str] | None = None
        try:
            for window, fraction in itertools.product(args.windows, args.refill_fractions):
                continuous.REFILL_FRACTION = fraction
                run = run_operator(preprocess, operator, inputs, args.batch_size, window)
                reference = reference if reference is not None else run.texts
                spread = token_spread(run.row_tokens)
                print(
                    f"  window {window}, refill fraction {fraction:g}: {run.seconds / run.images:.3f} s/img, "
                    f"live rows per decoding step {run.rows_per_decode_step:.2f} of {args.batch_size}, "
                    f"new tokens per row median {spread['median']:g} (max {spread['max']}), "
                    f"texts equal the first setting's: {run.texts == reference}",
                    flush=True,
                )
        finally:
            continuous.REFILL_FRACTION = kept
    print(f"done in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
