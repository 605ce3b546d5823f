"""Benchmark: CPU preprocessing images/s per core by family, PreprocessForModel vs the HF processor alone.

Run: python -m benchmarks.preprocess_throughput [--quick] [--images 48] [--sizes 640x480 1920x1080] [--repeats 3]

Processors are the real-size ones, built offline (no model weights needed): CLIP 336 px for llava and vipllava,
LLaVA-NeXT anyres 336 px with the llava-v1.6 pinpoints, SigLIP 384 px for llava_interleave; the tokenizer is the
offline BPE of llava_batch.pipeline.families.tiny_models. Inputs are synthetic photo-like JPEGs of each size.
  - operator: PreprocessForModel on a batch of {image_bytes, prompt} rows: decode, chat template, processor,
    packing (llava_batch.operators.tensor_codec) of every row;
  - processor: the HF processor called directly, one row at a time as the operator does, on the same images
    already decoded and the same prompts already rendered.
Both run in this one process with one thread (torch, OpenMP), so images/s is per core; variants are interleaved
within each repeat and the ratio is the median of per-repeat ratios. A breakdown of the operator's time per row
(decode, render, processor, pack) and the bytes per image that travel from the CPU actors to the model replicas
(the packed `model_inputs` as sent, uint8 pixels where the processor allows, against float32 and float16
pixels, and the npz container's overhead) follow.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: set before numpy and torch start their thread pools

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import gpu_generation as shared  # noqa: E402  (processors and synthetic images live there; it needs no Ray)
from llava_batch.operators.batch import object_array  # noqa: E402
from llava_batch.operators.chat_template import render_prompt, user_turn  # noqa: E402
from llava_batch.operators.decode import decode_image  # noqa: E402
from llava_batch.operators.preprocess import PreprocessForModel  # noqa: E402
from llava_batch.operators.tensor_codec import pack_arrays, unpack_arrays  # noqa: E402

# llava-hf/vip-llava-7b-hf: the same CLIP ViT-L/14-336 processor as LLaVA-1.5, its own prompt format.
SPECS: dict[str, shared.ModelSpec] = {
    "llava": shared.REAL_SPECS["llava"],
    "vipllava": dataclasses.replace(
        shared.REAL_SPECS["llava"], family="vipllava", checkpoint="llava-hf/vip-llava-7b-hf"
    ),
    "llava_next": shared.REAL_SPECS["llava_next"],
    "llava_interleave": shared.REAL_SPECS["llava_interleave"],
}
PROMPT = "Describe this image in detail."


@dataclasses.dataclass
class Case:
    """One family at one image size: the operator, the processor, and the same inputs in both forms."""

    family: str
    size: str
    operator: PreprocessForModel
    batch: dict[str, np.ndarray]
    images: list[Any]  # decoded PIL images
    text: str  # the rendered prompt
    jpeg_bytes: float  # mean JPEG size


def time_operator(case: Case) -> float:
    began = time.perf_counter()
    out = case.operator(case.batch)
    seconds = time.perf_counter() - began
    failed = [error for error in out["error"] if error is not None]
    if failed:
        raise RuntimeError(f"{case.family} {case.size}: the operator returned error rows: {failed[:3]}")
    return len(case.images) / seconds


def time_processor(case: Case) -> float:
    processor = case.operator.processor
    began = time.perf_counter()
    for image in case.images:
        processor(text=[case.text], images=[image], return_tensors="np")
    return len(case.images) / (time.perf_counter() - began)


def operator_breakdown(case: Case) -> dict[str, float]:
    """Milliseconds per row for each step PreprocessForModel.preprocess_row takes, timed one by one."""
    processor = case.operator.processor
    totals = dict.fromkeys(("decode", "render", "processor", "pack"), 0.0)
    for payload in case.batch["image_bytes"]:
        t0 = time.perf_counter()
        image = decode_image(payload, max_image_pixels=shared.MAX_IMAGE_PIXELS)
        t1 = time.perf_counter()
        text = render_prompt(processor, user_turn(PROMPT, 1))
        t2 = time.perf_counter()
        encoded = processor(text=[text], images=[image], return_tensors="np")
        t3 = time.perf_counter()
        pack_arrays({name: np.asarray(value) for name, value in encoded.items() if name != "attention_mask"})
        t4 = time.perf_counter()
        for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[name] += seconds
    return {name: 1000 * seconds / len(case.images) for name, seconds in totals.items()}


def transfer_sizes(case: Case) -> dict[str, Any]:
    """Bytes of one packed row as the operator sends it (uint8 pixels where the processor allows, see
    llava_batch.operators.pixel_transport) and with float32 pixels (compact transport off) or float16 ones; the raw array bytes
    without the npz container; the pixel tensor's shape and dtype."""
    one_row = {name: values[:1] for name, values in case.batch.items()}
    compact = case.operator(one_row)["model_inputs"][0]
    float32_operator = copy.copy(case.operator)
    float32_operator.pixel_table = None  # what compact_pixels=False sends
    wide = float32_operator(one_row)["model_inputs"][0]
    arrays = unpack_arrays(compact)
    float32_pixels = unpack_arrays(wide)["pixel_values"]
    as_half = pack_arrays({**arrays, "pixel_values": float32_pixels.astype(np.float16)})
    return {
        "sent": len(compact),
        "sent_raw": sum(array.nbytes for array in arrays.values()),
        "float32": len(wide),
        "float16": len(as_half),
        "pixel_shape": tuple(arrays["pixel_values"].shape),
        "pixel_dtype": str(arrays["pixel_values"].dtype),
        "tokens": int(arrays["input_ids"].shape[-1]),
    }


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size must be WIDTHxHEIGHT, e.g. 640x480, not {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, not {text!r}")
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(640, 480), (1920, 1080)])
    parser.add_argument("--images", type=int, default=48, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 640x480 only, 4 images, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.images, args.repeats = [(640, 480)], 4, 1
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be at least 1")
    return args


def build_cases(args: argparse.Namespace, work: Path) -> list[Case]:
    cases = []
    for family in args.families:
        checkpoint = work / family
        shared.build_processor(SPECS[family]).save_pretrained(checkpoint)
        operator = PreprocessForModel(str(checkpoint), max_image_pixels=shared.MAX_IMAGE_PIXELS)
        text = render_prompt(operator.processor, user_turn(PROMPT, 1))
        for width, height in args.sizes:
            inputs = shared.write_inputs(
                work / f"images-{width}x{height}", args.images, width=width, height=height, seed=args.seed
            )
            batch = {
                "id": object_array(inputs.ids),
                "image_bytes": object_array(inputs.payloads),
                "prompt": object_array([PROMPT] * len(inputs)),
            }
            images = [
                decode_image(payload, max_image_pixels=shared.MAX_IMAGE_PIXELS) for payload in inputs.payloads
            ]
            jpeg_bytes = sum(len(payload) for payload in inputs.payloads) / len(inputs)
            cases.append(Case(family, f"{width}x{height}", operator, batch, images, text, jpeg_bytes))
    return cases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    import transformers

    print(
        f"preprocess_throughput: one thread of a {os.cpu_count()}-core CPU, transformers "
        f"{transformers.__version__}, {args.images} images per measurement, {args.repeats} repeat(s)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="llava-prep-bench-") as work:
        cases = build_cases(args, Path(work))
        for case in cases:  # warm-up: first-call costs (imports, caches) out of the figures
            time_operator(dataclasses.replace(case, batch={k: v[:2] for k, v in case.batch.items()}))
            time_processor(dataclasses.replace(case, images=case.images[:2]))
        rates: dict[tuple[str, str, str], list[float]] = {}
        for repeat in range(args.repeats):
            for case in cases:
                order = ("operator", "processor") if repeat % 2 == 0 else ("processor", "operator")
                for variant in order:
                    rate = time_operator(case) if variant == "operator" else time_processor(case)
                    rates.setdefault((case.family, case.size, variant), []).append(rate)
            print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)
        breakdowns = {(case.family, case.size): operator_breakdown(case) for case in cases}
        sizes = {(case.family, case.size): transfer_sizes(case) for case in cases}

    print()
    header = (
        f"{'family':17s} {'image':>9s} {'operator img/s':>14s} {'processor img/s':>15s} {'op/proc':>7s} "
        f"{'decode ms':>9s} {'render ms':>9s} {'proc ms':>8s} {'pack ms':>8s}"
    )
    print(header)
    print("-" * len(header))
    ratios = {}
    for case in cases:
        key = (case.family, case.size)
        operator_rates = rates[(*key, "operator")]
        processor_rates = rates[(*key, "processor")]
        ratios[key] = shared.median([a / b for a, b in zip(operator_rates, processor_rates)])
        steps = breakdowns[key]
        print(
            f"{case.family:17s} {case.size:>9s} {shared.median(operator_rates):14.1f} "
            f"{shared.median(processor_rates):15.1f} {ratios[key]:7.2f} {steps['decode']:9.2f} "
            f"{steps['render']:9.2f} {steps['processor']:8.2f} {steps['pack']:8.2f}"
        )
    print()
    header = (
        f"{'family':17s} {'image':>9s} {'JPEG in':>9s} {'tokens':>6s} {'pixel_values shape':>22s} "
        f"{'sent':>9s} {'dtype':>7s} {'npz overhead':>12s} {'as f32':>9s} {'as f16':>9s} {'f32/sent':>8s}"
    )
    print("bytes per image between actors (packed model_inputs; JPEG in for comparison):")
    print(header)
    print("-" * len(header))
    for case in cases:
        size = sizes[(case.family, case.size)]
        print(
            f"{case.family:17s} {case.size:>9s} {case.jpeg_bytes / 1e3:8.0f}K {size['tokens']:6d} "
            f"{str(size['pixel_shape']):>22s} {size['sent'] / 1e6:8.3f}M {size['pixel_dtype']:>7s} "
            f"{size['sent'] - size['sent_raw']:11d}B {size['float32'] / 1e6:8.3f}M {size['float16'] / 1e6:8.3f}M "
            f"{size['float32'] / size['sent']:8.2f}"
        )
    print()
    parts = [
        f"{family}@{size} {shared.median(rates[(family, size, 'operator')]):.0f} img/s (x{ratio:.2f} of processor)"
        for (family, size), ratio in ratios.items()
    ]
    print("SUMMARY preprocess_throughput: operator per core " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
