"""Benchmark: CPU preprocessing images/s per core by family and photo size, with reduced and full JPEG decoding,
beside the HF processor alone.

Run: python -m benchmarks.preprocess_throughput [--quick] [--images 48] [--sizes 640x480 1920x1080 4032x3024]
     [--repeats 3]

Processors are the real-size ones, built offline (no model weights needed): CLIP 336 px for llava and vipllava,
LLaVA-NeXT anyres 336 px with the llava-v1.6 pinpoints, SigLIP 384 px for llava_interleave; the tokenizer is the
offline BPE of llava_batch.pipeline.families.tiny_models. Inputs are synthetic photo-like JPEGs (smooth gradients,
flat shapes, noise; quality 90) of each size; larger sizes get fewer images (the same pixels per measurement).
  - reduced: PreprocessForModel as jobs run it by default: JPEGs decoded at 1/2, 1/4 or 1/8 scale where the
    processor's target size still fits (llava_batch.operators.preprocess.decode_min_size), then decode, chat
    template, processor, packing (llava_batch.operators.tensor_codec) of every row;
  - full: the same operator with exact_decode=True (every JPEG decoded in full);
  - processor: the HF processor called directly, one row at a time as the operator does, on the same images
    already fully decoded and the same prompts already rendered (decoding not counted).
Both run in this one process with one thread (torch, OpenMP), so images/s is per core; variants are interleaved
within each repeat and ratios are medians of per-repeat ratios. `max/mean diff`: the largest and the mean difference
of the uint8 pixel values the model receives, reduced against full decoding, over the measured images. A breakdown of the
reduced operator's time per row (decode, render, processor, pack) and the bytes per image that travel from the
CPU actors to the model replicas (the packed `model_inputs` as sent, uint8 pixels where the processor allows,
against float32 and float16 pixels, and the npz container's overhead) follow.
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

from benchmarks.common.inputs import MAX_IMAGE_PIXELS, write_inputs  # noqa: E402
from benchmarks.common.models import REAL_SPECS, ModelSpec, build_processor  # noqa: E402
from benchmarks.common.report import median  # noqa: E402
from llava_batch.operators.batch import object_array  # noqa: E402
from llava_batch.operators.chat_template import render_prompt, user_turn  # noqa: E402
from llava_batch.operators.decode import decode_image  # noqa: E402
from llava_batch.operators.preprocess import PreprocessForModel  # noqa: E402
from llava_batch.operators.tensor_codec import pack_arrays, unpack_arrays  # noqa: E402

# llava-hf/vip-llava-7b-hf: the same CLIP ViT-L/14-336 processor as LLaVA-1.5, its own prompt format.
SPECS: dict[str, ModelSpec] = {
    "llava": REAL_SPECS["llava"],
    "vipllava": dataclasses.replace(
        REAL_SPECS["llava"], family="vipllava", checkpoint="llava-hf/vip-llava-7b-hf"
    ),
    "llava_next": REAL_SPECS["llava_next"],
    "llava_interleave": REAL_SPECS["llava_interleave"],
}
PROMPT = "Describe this image in detail."


@dataclasses.dataclass
class Case:
    """One family at one image size: the operator, the processor, and the same inputs in both forms."""

    family: str
    size: str
    operator: PreprocessForModel
    exact_operator: PreprocessForModel
    batch: dict[str, np.ndarray]
    images: list[Any]  # decoded PIL images
    text: str  # the rendered prompt
    jpeg_bytes: float  # mean JPEG size


def time_operator(case: Case, operator: PreprocessForModel | None = None) -> float:
    began = time.perf_counter()
    out = (operator or case.operator)(case.batch)
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


def pixel_difference(case: Case) -> str:
    """Largest difference of the pixel values the model receives, reduced against full decoding."""
    reduced = case.operator(case.batch)["model_inputs"]
    full = case.exact_operator(case.batch)["model_inputs"]
    worst, means = 0.0, []
    for one, other in zip(reduced, full):
        a, b = unpack_arrays(one)["pixel_values"], unpack_arrays(other)["pixel_values"]
        if a.shape != b.shape:
            return f"shape {a.shape} != {b.shape}"
        difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
        worst, means = max(worst, float(difference.max())), [*means, float(difference.mean())]
    return f"{worst:g}/{np.mean(means):.2f}"


def operator_breakdown(case: Case) -> dict[str, float]:
    """Milliseconds per row for each step PreprocessForModel.preprocess_row takes, timed one by one."""
    processor = case.operator.processor
    totals = dict.fromkeys(("decode", "render", "processor", "pack"), 0.0)
    for payload in case.batch["image_bytes"]:
        t0 = time.perf_counter()
        image = decode_image(
            payload, max_image_pixels=MAX_IMAGE_PIXELS, min_size=case.operator.decode_min_size
        )
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
    parser.add_argument(
        "--sizes", nargs="+", type=parse_size, default=[(640, 480), (1920, 1080), (4032, 3024)]
    )
    parser.add_argument(
        "--images",
        type=int,
        default=48,
        help="images per measurement at 640x480 (fewer at larger sizes, at least 4)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 640x480 only, 4 images, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.images, args.repeats = [(640, 480)], 4, 1
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be at least 1")
    return args


def images_at(args: argparse.Namespace, width: int, height: int) -> int:
    """The same pixels per measurement at every size: `--images` at 640x480, fewer (at least 4) above."""
    return max(4, min(args.images, round(args.images * 640 * 480 / (width * height))))


def build_cases(args: argparse.Namespace, work: Path) -> list[Case]:
    cases = []
    inputs_by_size = {}
    for width, height in args.sizes:
        inputs = write_inputs(
            work / f"images-{width}x{height}",
            images_at(args, width, height),
            width=width,
            height=height,
            seed=args.seed,
        )
        images = [decode_image(payload, max_image_pixels=MAX_IMAGE_PIXELS) for payload in inputs.payloads]
        inputs_by_size[(width, height)] = (inputs, images)
    for family in args.families:
        checkpoint = work / family
        build_processor(SPECS[family]).save_pretrained(checkpoint)
        operator = PreprocessForModel(str(checkpoint), max_image_pixels=MAX_IMAGE_PIXELS)
        exact_operator = PreprocessForModel(
            str(checkpoint), max_image_pixels=MAX_IMAGE_PIXELS, exact_decode=True
        )
        text = render_prompt(operator.processor, user_turn(PROMPT, 1))
        for (width, height), (inputs, images) in inputs_by_size.items():
            batch = {
                "id": object_array(inputs.ids),
                "image_bytes": object_array(inputs.payloads),
                "prompt": object_array([PROMPT] * len(inputs)),
            }
            jpeg_bytes = sum(len(payload) for payload in inputs.payloads) / len(inputs)
            cases.append(
                Case(family, f"{width}x{height}", operator, exact_operator, batch, images, text, jpeg_bytes)
            )
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
        variants = ("reduced", "full", "processor")
        for repeat in range(args.repeats):
            for case in cases:
                order = variants if repeat % 2 == 0 else variants[::-1]
                for variant in order:
                    if variant == "processor":
                        rate = time_processor(case)
                    else:
                        rate = time_operator(
                            case, case.operator if variant == "reduced" else case.exact_operator
                        )
                    rates.setdefault((case.family, case.size, variant), []).append(rate)
            print(f"  repeat {repeat + 1}/{args.repeats} done", flush=True)
        differences = {(case.family, case.size): pixel_difference(case) for case in cases}
        breakdowns = {(case.family, case.size): operator_breakdown(case) for case in cases}
        sizes = {(case.family, case.size): transfer_sizes(case) for case in cases}

    print()
    header = (
        f"{'family':17s} {'image':>9s} {'reduced img/s':>13s} {'full img/s':>10s} {'processor img/s':>15s} "
        f"{'red/full':>8s} {'red/proc':>8s} {'max/mean diff':>13s} "
        f"{'decode ms':>9s} {'render ms':>9s} {'proc ms':>8s} {'pack ms':>8s}"
    )
    print(header)
    print("-" * len(header))
    speedups, ratios = {}, {}
    for case in cases:
        key = (case.family, case.size)
        reduced, full, processor = (rates[(*key, variant)] for variant in variants)
        speedups[key] = median([a / b for a, b in zip(reduced, full)])
        ratios[key] = median([a / b for a, b in zip(reduced, processor)])
        steps = breakdowns[key]
        print(
            f"{case.family:17s} {case.size:>9s} {median(reduced):13.1f} {median(full):10.1f} "
            f"{median(processor):15.1f} {speedups[key]:8.2f} {ratios[key]:8.2f} {differences[key]:>13s} "
            f"{steps['decode']:9.2f} {steps['render']:9.2f} {steps['processor']:8.2f} {steps['pack']:8.2f}"
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
        f"{family}@{size} {median(rates[(family, size, 'reduced')]):.1f} img/s "
        f"(x{speedups[(family, size)]:.2f} of full decoding, x{ratio:.2f} of processor)"
        for (family, size), ratio in ratios.items()
    ]
    print("SUMMARY preprocess_throughput: operator per core " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
