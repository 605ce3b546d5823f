"""Benchmark: time per decoding step spent outside the model's forward, continuous batcher vs `model.generate`.

Run: python -m benchmarks.step_overhead [--batches 8 32 64] [--new-tokens 32] [--repeats 3]

A tiny random LLaVA (llava_batch.pipeline.families.tiny_models, text hidden size 64, 2 layers) makes the model's
own compute small, so what is left is the decoding loop's Python and tensor bookkeeping. The same preprocessed rows
(one per slot, all admitted at once) decode exactly `--new-tokens` tokens each (min_new_tokens = max_new_tokens,
greedy) through:
  - generate: one batched `model.generate` call (left-padded, as the replica runs it without continuous batching);
  - continuous: llava_batch.operators.generation.continuous_batching.ContinuousBatcher with as many slots as rows.
Forward hooks on the model time every forward call (prefill included); overhead per step = (wall time - time
inside forwards) / forward calls. One thread; variants interleaved per repeat; medians. The --compile path is not
measured here (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import io  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llava_batch.operators.generation.continuous_batching import (  # noqa: E402
    ContinuousBatcher,
    DecodingSettings,
)
from llava_batch.operators.generation.replica import Generate  # noqa: E402
from llava_batch.operators.preprocess import PreprocessForModel  # noqa: E402
from llava_batch.operators.tensor_codec import unpack_arrays  # noqa: E402
from llava_batch.pipeline.families.tiny_models import build_tiny_model  # noqa: E402


class ForwardClock:
    """Seconds spent inside the model's forward calls, and how many there were."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds, self.calls, self._began = 0.0, 0, 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, *_: object) -> None:
        self._began = time.perf_counter()

    def _post(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._began
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def raw_rows(count: int) -> dict[str, np.ndarray]:
    from PIL import Image

    images = np.empty(count, dtype=object)
    for index in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (48, 40), (index * 3 % 256, 80, 160)).save(buffer, format="PNG")
        images[index] = buffer.getvalue()
    return {
        "id": np.array([f"row-{index}" for index in range(count)], dtype=object),
        "image_bytes": images,
        "prompt": np.array(
            ["Describe this image." if index % 2 else "What is it?" for index in range(count)], dtype=object
        ),
    }


def measure(
    variant: str, operator: Generate, rows: list, new_tokens: int, clock: ForwardClock
) -> tuple[float, int]:
    """(overhead seconds per forward call, forward calls) of one run."""
    model = operator.model
    clock.reset()
    began = time.perf_counter()
    with torch.inference_mode():
        if variant == "generate":
            inputs = operator.collate_on_device([operator.expand_row_pixels(row) for row in rows], "left")
            model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=operator.pad_token_id,
            )
        else:
            settings = DecodingSettings(
                max_new_tokens=new_tokens,
                eos_token_ids=frozenset(operator.eos_token_ids),
                min_new_tokens=new_tokens,
            )
            batcher = ContinuousBatcher(
                model,
                settings,
                collate=lambda chosen: operator.collate_on_device(
                    [operator.expand_row_pixels(row) for row in chosen], "left"
                ),
                slots=len(rows),
            )
            batcher.run(rows)
    wall = time.perf_counter() - began
    return (wall - clock.seconds) / max(clock.calls, 1), clock.calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="llava-step-bench-") as work:
        model_dir = build_tiny_model("llava", Path(work) / "tiny")
        prepared = PreprocessForModel(str(model_dir), max_image_pixels=10**8)(raw_rows(max(args.batches)))
        operator = Generate(
            str(model_dir), generate_kwargs={"max_new_tokens": args.new_tokens}, dtype="float32"
        )
        clock = ForwardClock(operator.model)
        all_rows = [unpack_arrays(blob) for blob in prepared["model_inputs"]]
        variants = ("generate", "continuous")
        for variant in variants:  # warm-up
            measure(variant, operator, all_rows[:2], 2, clock)
        results: dict[tuple[str, int], list[float]] = {}
        calls: dict[tuple[str, int], int] = {}
        for repeat in range(args.repeats):
            for batch in args.batches:
                order = variants if repeat % 2 == 0 else variants[::-1]
                for variant in order:
                    overhead, forwards = measure(variant, operator, all_rows[:batch], args.new_tokens, clock)
                    results.setdefault((variant, batch), []).append(overhead)
                    calls[(variant, batch)] = forwards
    print(
        f"step_overhead: tiny llava, {args.new_tokens} new tokens per row, {args.repeats} repeat(s), one thread"
    )
    header = f"{'batch':>5s} {'generate ms/step':>16s} {'continuous ms/step':>18s} {'cont/gen':>8s} {'forwards g/c':>12s}"
    print(header)
    print("-" * len(header))
    parts = []
    for batch in args.batches:
        generate_ms = 1000 * float(np.median(results[("generate", batch)]))
        continuous_ms = 1000 * float(np.median(results[("continuous", batch)]))
        print(
            f"{batch:5d} {generate_ms:16.3f} {continuous_ms:18.3f} {continuous_ms / generate_ms:8.2f} "
            f"{calls[('generate', batch)]:>5d}/{calls[('continuous', batch)]:<6d}"
        )
        parts.append(
            f"batch {batch}: continuous {continuous_ms:.2f} ms vs generate {generate_ms:.2f} ms per step"
        )
    print("SUMMARY step_overhead: outside-forward time per step; " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
