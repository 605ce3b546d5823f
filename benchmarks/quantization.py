"""Benchmark: memory per replica and speed of `--quantization none / 8bit / 4bit` on CPU.

Run: python -m benchmarks.quantization [--images 16] [--batch-size 8] [--new-tokens 32]
     (about 2 minutes on 2 shared cores with the defaults)

The operator alone (PreprocessForModel + Generate, as in generation_vs_peers.py: the same CPU-sized random
LLaVA-1.5, computing in float32, greedy, 1 torch thread), once per quantization on the same rows, every row
decoding exactly --new-tokens tokens (no stop token). Each line prints the replica's model in memory
(`model.get_memory_footprint()`), its load time, its seconds per image and whether its texts equal the
unquantized ones (random weights: a near-tie between tokens flips under quantization, so expect disagreement here;
the trained checkpoint's agreement is in tests/operators/test_quantization.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common.inputs import MAX_IMAGE_PIXELS, write_inputs
from benchmarks.common.models import build_checkpoint
from benchmarks.common.variants import run_operator
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel

QUANTIZATIONS = ("none", "8bit", "4bit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.images, args.batch_size, args.new_tokens) < 1:
        parser.error("--images, --batch-size and --new-tokens must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    results: dict[str, tuple[int, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="llava-quant-bench-") as work:
        checkpoint, parameters = build_checkpoint(Path(work) / "model", args.seed)
        preprocess = PreprocessForModel(str(checkpoint), max_image_pixels=MAX_IMAGE_PIXELS)
        inputs = write_inputs(Path(work) / "images", args.images, seed=args.seed)
        print(
            f"quantization: {parameters / 1e6:.0f}M parameters, {args.images} images, batch {args.batch_size}, "
            f"{args.new_tokens} new tokens per row",
            flush=True,
        )
        reference: list[str] | None = None
        for quantization in QUANTIZATIONS:
            loading = time.perf_counter()
            operator = Generate(
                str(checkpoint), generate_kwargs=kwargs, dtype="float32", quantization=quantization
            )
            load_s = time.perf_counter() - loading
            run_operator(preprocess, operator, inputs.head(2), 2)  # warm-up
            run = run_operator(preprocess, operator, inputs, args.batch_size)
            reference = reference if reference is not None else run.texts
            same = sum(text == other for text, other in zip(run.texts, reference))
            memory = operator.clock.memory_bytes
            results[quantization] = (memory, run.seconds / run.images, load_s)
            print(
                f"  {quantization:4s}: model {memory / 2**20:7.1f} MiB, loaded in {load_s:5.1f} s, "
                f"{run.seconds / run.images:.3f} s/img, texts equal to none's: {same}/{run.images}",
                flush=True,
            )
            del operator
    base_memory, base_speed, _ = results["none"]
    ratios = ", ".join(
        f"{name} memory x{memory / base_memory:.2f} time x{speed / base_speed:.2f}"
        for name, (memory, speed, _) in results.items()
        if name != "none"
    )
    print(f"SUMMARY quantization vs none (CPU, float32 compute): {ratios}")
    print(f"done in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
