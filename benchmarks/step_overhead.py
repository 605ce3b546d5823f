"""Benchmark: time per decoding step spent outside the model's forward, continuous batcher vs `model.generate`.

Run: python -m benchmarks.step_overhead [--batches 8 32 64] [--new-tokens 32] [--repeats 3] [--no-compile]

A tiny random LLaVA (llava_batch.pipeline.families.tiny_models, text hidden size 64, 2 layers) makes the model's
own compute small, so what is left is the decoding loop's Python and tensor bookkeeping. The same preprocessed rows
(one per slot, all admitted at once) decode exactly `--new-tokens` tokens each (min_new_tokens = max_new_tokens,
greedy) through:
  - generate: one batched `model.generate` call (left-padded, as the replica runs it without continuous batching);
  - continuous: llava_batch.operators.generation.continuous_batching.ContinuousBatcher with as many slots as rows;
  - slots: llava_batch.operators.generation.static_slots without compiling (the static-slot loop itself);
  - generate+compile: `--compile` without continuous batching: `model.generate` on transformers' static cache, its
    decoding step compiled by transformers (torch.compile);
  - slots+compile: `--compile` with continuous batching: llava_batch.operators.generation.static_slots, the decoding
    step over static slot buffers compiled once per shape.
Forward hooks on the model time every forward call (prefill included); overhead per step = (wall time - time
inside forwards) / forward calls, for the eager variants (a compiled forward has no hooks to time it). Every
variant also reports its whole time per forward call (32 calls for all: prefill + 31 steps). Compiling is done
before timing, once per batch shape (about a minute each on a 2-core CPU); --no-compile skips those variants.
One thread; variants interleaved per repeat; medians. On a machine with a GPU the model runs there (as a replica
would), and the clocks wait for its kernels.
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
from llava_batch.operators.generation.static_slots import SlotSteps, StaticSlotBatcher  # noqa: E402
from llava_batch.operators.preprocess import PreprocessForModel  # noqa: E402
from llava_batch.operators.tensor_codec import unpack_arrays  # noqa: E402
from llava_batch.pipeline.families.tiny_models import build_tiny_model  # noqa: E402


def synchronize() -> None:
    """On a GPU kernels run after the Python returns: wait for them, so a clock reading includes them."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class ForwardClock:
    """Seconds spent inside the model's forward calls, and how many there were."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds, self.calls, self._began = 0.0, 0, 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, *_: object) -> None:
        synchronize()
        self._began = time.perf_counter()

    def _post(self, *_: object) -> None:
        synchronize()
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


EAGER = ("generate", "continuous", "slots")
COMPILED = ("generate+compile", "slots+compile")


def measure(
    variant: str,
    operator: Generate,
    rows: list,
    new_tokens: int,
    clock: ForwardClock,
    slot_steps: SlotSteps | None = None,
) -> tuple[float | None, float, int]:
    """(overhead seconds per forward call outside it, or None where it cannot be timed; whole seconds per forward
    call; forward calls) of one run."""
    model = operator.model
    clock.reset()
    settings = DecodingSettings(
        max_new_tokens=new_tokens, eos_token_ids=frozenset(operator.eos_token_ids), min_new_tokens=new_tokens
    )

    def collate(chosen: list) -> dict:
        return operator.collate_on_device([operator.expand_row_pixels(row) for row in chosen], "left")

    began = time.perf_counter()
    with torch.inference_mode():
        if variant in ("generate", "generate+compile"):
            model.generate(
                **collate(rows),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=operator.pad_token_id,
            )
        elif variant == "continuous":
            ContinuousBatcher(model, settings, collate=collate, slots=len(rows)).run(rows)
        else:
            StaticSlotBatcher(model, settings, collate=collate, slots=len(rows), steps=slot_steps).run(rows)
    synchronize()
    wall = time.perf_counter() - began
    if variant in COMPILED:
        return None, wall / new_tokens, new_tokens  # prefill + (new_tokens - 1) steps
    calls = max(clock.calls, 1)
    return (wall - clock.seconds) / calls, wall / calls, clock.calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the two compiled variants")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="llava-step-bench-") as work:
        model_dir = build_tiny_model("llava", Path(work) / "tiny")
        prepared = PreprocessForModel(str(model_dir), max_image_pixels=10**8)(raw_rows(max(args.batches)))
        kwargs = {"generate_kwargs": {"max_new_tokens": args.new_tokens}, "dtype": "float32"}
        operator = Generate(str(model_dir), **kwargs)
        clock = ForwardClock(operator.model)
        all_rows = [unpack_arrays(blob) for blob in prepared["model_inputs"]]
        variants = EAGER
        operators = dict.fromkeys(EAGER, operator)
        slot_steps = {"slots": SlotSteps(compiled=False), "slots+compile": SlotSteps(compiled=True)}
        if not args.no_compile:
            variants = EAGER + COMPILED
            # Its own model: --compile sets generate's static cache and compile config on the model.
            compiled = Generate(str(model_dir), compile=True, continuous_batching=False, **kwargs)
            operators.update(dict.fromkeys(COMPILED, compiled))
        for variant in EAGER:  # warm-up
            measure(variant, operator, all_rows[:2], 2, clock, slot_steps.get(variant))

        def run(variant: str, batch: int) -> tuple[float | None, float, int]:
            rows = all_rows[:batch]
            return measure(variant, operators[variant], rows, args.new_tokens, clock, slot_steps.get(variant))

        compile_seconds: dict[tuple[str, int], float] = {}
        for variant in variants[len(EAGER) :]:  # compile every shape before timing
            for batch in args.batches:
                began = time.perf_counter()
                run(variant, batch)
                compile_seconds[(variant, batch)] = time.perf_counter() - began
                print(
                    f"compiled {variant} at batch {batch}: {compile_seconds[(variant, batch)]:.1f} s",
                    flush=True,
                )
        outside: dict[tuple[str, int], list[float]] = {}
        whole: dict[tuple[str, int], list[float]] = {}
        calls: dict[tuple[str, int], int] = {}
        for repeat in range(args.repeats):
            for batch in args.batches:
                order = variants if repeat % 2 == 0 else variants[::-1]
                for variant in order:
                    overhead, per_call, forwards = run(variant, batch)
                    if overhead is not None:
                        outside.setdefault((variant, batch), []).append(overhead)
                    whole.setdefault((variant, batch), []).append(per_call)
                    calls[(variant, batch)] = forwards
    print(
        f"step_overhead: tiny llava, {args.new_tokens} new tokens per row, {args.repeats} repeat(s), one thread"
    )
    print("outside the forward, ms per forward call (eager variants):")
    header = f"{'batch':>5s} {'generate':>10s} {'continuous':>10s} {'slots':>10s} {'cont/gen':>8s} {'slots/gen':>9s}"
    print(header)
    print("-" * len(header))
    parts = []

    def ms(table: dict[tuple[str, int], list[float]], variant: str, batch: int) -> float:
        return 1000 * float(np.median(table[(variant, batch)]))

    for batch in args.batches:
        assert calls[("generate", batch)] == calls[("continuous", batch)] == calls[("slots", batch)]
        generate_ms, continuous_ms = ms(outside, "generate", batch), ms(outside, "continuous", batch)
        slots_ms = ms(outside, "slots", batch)
        print(
            f"{batch:5d} {generate_ms:10.3f} {continuous_ms:10.3f} {slots_ms:10.3f} "
            f"{continuous_ms / generate_ms:8.2f} {slots_ms / generate_ms:9.2f}"
        )
        parts.append(
            f"batch {batch}: continuous {continuous_ms:.2f}, slots {slots_ms:.2f} vs generate {generate_ms:.2f}"
        )
    print("whole time per forward call, ms (model included):")
    header = f"{'batch':>5s} " + " ".join(f"{variant:>16s}" for variant in variants)
    print(header)
    print("-" * len(header))
    whole_parts = []
    for batch in args.batches:
        figures = [ms(whole, variant, batch) for variant in variants]
        print(f"{batch:5d} " + " ".join(f"{figure:16.3f}" for figure in figures))
        whole_parts.append(
            f"batch {batch}: "
            + ", ".join(f"{variant} {figure:.2f}" for variant, figure in zip(variants, figures))
        )
    if compile_seconds:
        print(
            "compile time, s: "
            + ", ".join(
                f"{variant} b{batch} {seconds:.0f}" for (variant, batch), seconds in compile_seconds.items()
            )
        )
    print(
        "SUMMARY step_overhead: outside-forward ms per step; "
        + "; ".join(parts)
        + " | whole ms per forward call; "
        + "; ".join(whole_parts)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
