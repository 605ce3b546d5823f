"""Benchmark: do captions change when JPEGs are decoded at reduced scale? Agreement with full decoding.

Run: python -m benchmarks.decode_agreement [--families llava llava_next] [--samples 100]
     [--sizes 12mp 1080p 480p] [--geometry trained|real]

--geometry trained (the default): the trained built-in checkpoints (builtin:llava, builtin:llava_next) caption held-out shape images
(llava_batch.training.shapes) scaled up, keeping their aspect ratio, to the area of a 12 MP photo (4032x3024),
of 1080p (1920x1080) and of 640x480, stored as JPEG quality 90. Each row is captioned twice through
PreprocessForModel + Generate (float32, greedy, as a caption job runs them): with the default reduced decoding and
with exact_decode=True. Reported per family and size: agreement (the share of rows whose caption is the same
text), the exact-match accuracy of both against the known answers, and the decode scale used.

--geometry real: each family's real-geometry model (llava_batch.pipeline.families.tiny_models.build_tiny_model
with geometry="real", built in a temporary folder: random small weights, but the public checkpoint's vision input
and processor: CLIP 336 px for llava and vipllava, anyres up to 672 px for llava_next, SigLIP 384 px for
llava_interleave), so the decode scales are the ones real models get (640x480 is not reduced for a 336 px model).
Inputs: synthetic photo-like JPEGs (benchmarks.common.inputs.synthetic_jpeg: smooth gradients, flat shapes, mild
noise; q90) of exactly 4032x3024, 1920x1080 and 640x480, the same images for every family, one captioning prompt
of the four in benchmarks.common.inputs.PROMPTS each. Reported per family and size: the decode scale, the mean and
the largest difference of the uint8 pixel values the model receives (reduced against full decoding), and the share
of rows whose greedy new token ids (8 by default) are identical. Random weights have no right answers, so only
agreement is reported; and a random model's greedy output is sensitive (its next-token scores are close together,
so a small change of input can flip a token and everything after it), which makes this a harsh measure: a trained
model's decisions have margins that small pixel differences rarely cross.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common.inputs import PROMPTS, synthetic_jpeg
from llava_batch.operators.batch import object_array
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.tensor_codec import unpack_arrays
from llava_batch.pipeline.families import FAMILIES
from llava_batch.pipeline.families.tiny_models import build_tiny_model
from llava_batch.training.oracle import MAX_NEW_TOKENS, exact_match
from llava_batch.training.shapes import Sample, samples

SIZES = {"12mp": (4032, 3024), "1080p": (1920, 1080), "480p": (640, 480)}
AREAS = {name: width * height for name, (width, height) in SIZES.items()}
MAX_IMAGE_PIXELS = 64_000_000


def scaled_jpeg(image: Image.Image, area: int, quality: int = 90) -> bytes:
    """`image` scaled up (bicubic) to about `area` pixels with its aspect ratio kept, as JPEG bytes."""
    factor = math.sqrt(area / (image.width * image.height))
    large = image.resize(
        (round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC
    )
    buffer = io.BytesIO()
    large.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def rows_at(chosen: list[Sample], area: int) -> dict[str, np.ndarray]:
    image_bytes = np.empty(len(chosen), dtype=object)
    for index, sample in enumerate(chosen):
        image_bytes[index] = scaled_jpeg(sample.images[0], area)
    return {
        "id": np.array([f"row-{index:05d}" for index in range(len(chosen))], dtype=object),
        "image_bytes": image_bytes,
        "prompt": np.array([sample.prompt for sample in chosen], dtype=object),
    }


def captions(
    preprocess: PreprocessForModel, generate: Generate, rows: dict[str, np.ndarray], batch_size: int = 16
) -> list[str | None]:
    texts: list[str | None] = []
    for start in range(0, len(rows["prompt"]), batch_size):
        batch = {name: values[start : start + batch_size] for name, values in rows.items()}
        out = generate(preprocess(batch))
        failed = [error for error in out["error"] if error is not None]
        if failed:
            raise RuntimeError(f"error rows: {failed[:3]}")
        texts.extend(out["generated_text"])
    return texts


def agreement(one: list[str | None], other: list[str | None]) -> float:
    return sum(a == b for a, b in zip(one, other, strict=True)) / max(len(one), 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--geometry",
        choices=["trained", "real"],
        default="trained",
        help="trained: the built-in checkpoints (32-64 px); real: random-weight real-geometry models",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=["llava", "llava_next"],
        help="trained geometry: llava and llava_next only",
    )
    parser.add_argument("--sizes", nargs="+", choices=list(AREAS), default=list(AREAS))
    parser.add_argument(
        "--samples", type=int, default=None, help="rows per family and size (default: 100 trained, 24 real)"
    )
    parser.add_argument("--new-tokens", type=int, default=8, help="real geometry: greedy new tokens per row")
    args = parser.parse_args(argv)
    if args.samples is None:
        args.samples = 100 if args.geometry == "trained" else 24
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if args.new_tokens < 1:
        parser.error("--new-tokens must be at least 1")
    if args.geometry == "trained" and set(args.families) - {"llava", "llava_next"}:
        parser.error("--geometry trained: only llava and llava_next have trained built-in checkpoints")
    return args


def photo_rows(size: str, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` synthetic photo-like JPEGs of exactly the size named `size`, with captioning prompts."""
    width, height = SIZES[size]
    rng = np.random.default_rng(seed)
    return {
        "id": object_array([f"row-{index:05d}" for index in range(count)]),
        "image_bytes": object_array([synthetic_jpeg(width, height, rng) for _ in range(count)]),
        "prompt": object_array([PROMPTS[index % len(PROMPTS)] for index in range(count)]),
    }


def decode_scale(operator: PreprocessForModel, payload: bytes) -> str:
    """The scale reduced decoding picks for `payload` under `operator`'s processor: "1", "1/2", ... "1/8"."""
    image = Image.open(io.BytesIO(payload))
    width = image.width
    wanted = operator.decode_min_size(*image.size) if operator.decode_min_size is not None else None
    if wanted is not None:
        image.draft("RGB", wanted)
    return str(Fraction(image.width, width))


def pixel_differences(reduced: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean and largest difference of the pixel values the model receives (uint8 levels), over all rows."""
    worst, total, count = 0.0, 0.0, 0
    for one, other in zip(reduced["model_inputs"], full["model_inputs"], strict=True):
        a, b = unpack_arrays(one)["pixel_values"], unpack_arrays(other)["pixel_values"]
        if a.shape != b.shape:
            raise RuntimeError(f"pixel grids differ: {a.shape} != {b.shape}")
        difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
        worst, total, count = (
            max(worst, float(difference.max())),
            total + difference.sum(),
            count + difference.size,
        )
    return total / max(count, 1), worst


def greedy_token_ids(
    generate: Generate, prepared: dict[str, np.ndarray], new_tokens: int, batch_size: int = 8
) -> list[list[int]]:
    """Each row's greedy new token ids (exactly `new_tokens`: no early stop), through Generate's own collation."""
    failed = [error for error in prepared["error"] if error is not None]
    if failed:
        raise RuntimeError(f"error rows: {failed[:3]}")
    rows = [generate.expand_row_pixels(unpack_arrays(packed)) for packed in prepared["model_inputs"]]
    out: list[list[int]] = []
    for start in range(0, len(rows), batch_size):
        inputs = generate.collate_on_device(rows[start : start + batch_size], generate.padding_side)
        with torch.no_grad():
            output = generate.model.generate(
                **inputs,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=generate.pad_token_id,
            )
        out.extend(output[:, inputs["input_ids"].shape[1] :].tolist())
    return out


def run_real(args: argparse.Namespace) -> int:
    """--geometry real: pixel differences and greedy token agreement on random-weight real-geometry models."""
    print(
        f"decode_agreement --geometry real: {args.samples} synthetic photos per size, JPEG q90, "
        f"{args.new_tokens} greedy new tokens, float32",
        flush=True,
    )
    began = time.perf_counter()
    rows_by_size = {size: photo_rows(size, args.samples) for size in args.sizes}
    print(f"inputs written in {time.perf_counter() - began:.1f} s", flush=True)
    header = (
        f"{'family':16s} {'size':>9s} {'scale':>5s} {'decoded':>9s} {'mean diff':>9s} {'max diff':>8s} "
        f"{'agreement':>9s} {'distinct':>8s} {'seconds':>7s}"
    )
    lines, parts = [], []
    with tempfile.TemporaryDirectory(prefix="decode-agreement-") as work:
        for family in args.families:
            checkpoint = str(build_tiny_model(family, Path(work) / family, geometry="real"))
            reduced = PreprocessForModel(checkpoint, max_image_pixels=MAX_IMAGE_PIXELS)
            exact = PreprocessForModel(checkpoint, max_image_pixels=MAX_IMAGE_PIXELS, exact_decode=True)
            generate = Generate(checkpoint, generate_kwargs={}, dtype="float32")
            for size in args.sizes:
                began = time.perf_counter()
                rows = rows_by_size[size]
                reduced_out, exact_out = reduced(rows), exact(rows)
                mean_diff, max_diff = pixel_differences(reduced_out, exact_out)
                reduced_ids = greedy_token_ids(generate, reduced_out, args.new_tokens)
                exact_ids = greedy_token_ids(generate, exact_out, args.new_tokens)
                same = [one == other for one, other in zip(reduced_ids, exact_ids, strict=True)]
                # Rows whose outputs all match say little if the model answers every image alike: count them.
                distinct = len({tuple(ids) for ids in exact_ids})
                share = sum(same) / len(same)
                scale = decode_scale(reduced, rows["image_bytes"][0])
                width, height = SIZES[size]
                decoded = f"{round(width * Fraction(scale))}x{round(height * Fraction(scale))}"
                line = (
                    f"{family:16s} {width}x{height:<4d} {scale:>5s} {decoded:>9s} {mean_diff:9.3f} "
                    f"{max_diff:8g} {share:9.3f} {distinct:8d} {time.perf_counter() - began:7.1f}"
                )
                print(line, flush=True)
                lines.append(line)
                parts.append(f"{family}@{size} 1/{Fraction(scale).denominator} {share:.3f}")
            del generate
    print()
    print("(scale/decoded: what reduced decoding gives each image; diff: uint8 levels the model receives,")
    print(
        " reduced vs full; agreement: share of rows whose greedy new token ids are identical; distinct: how many"
    )
    print(
        " different token sequences full decoding gave over the rows: near 1 would make agreement say little)"
    )
    print(header)
    print("-" * len(header))
    print("\n".join(lines))
    print()
    print("SUMMARY decode_agreement --geometry real: token ids equal to full decoding " + "; ".join(parts))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.geometry == "real":
        return run_real(args)
    print(f"decode_agreement: {args.samples} held-out samples per family and size, JPEG q90", flush=True)
    header = (
        f"{'family':11s} {'size':>6s} {'image':>10s} {'decoded':>10s} {'agreement':>9s} "
        f"{'acc reduced':>11s} {'acc full':>8s} {'seconds':>7s}"
    )
    lines, parts = [], []
    for family in args.families:
        model = f"builtin:{family}"
        reduced = PreprocessForModel(model, max_image_pixels=MAX_IMAGE_PIXELS)
        exact = PreprocessForModel(model, max_image_pixels=MAX_IMAGE_PIXELS, exact_decode=True)
        generate = Generate(
            model,
            generate_kwargs={"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False},
            dtype="float32",
        )
        chosen = samples(family, "heldout", args.samples, seed=0)
        answers = [sample.answer for sample in chosen]
        for size in args.sizes:
            began = time.perf_counter()
            rows = rows_at(chosen, AREAS[size])
            first = Image.open(io.BytesIO(rows["image_bytes"][0]))
            first.draft("RGB", reduced.decode_min_size(*first.size))
            reduced_texts = captions(reduced, generate, rows)
            exact_texts = captions(exact, generate, rows)
            share = agreement(reduced_texts, exact_texts)
            line = (
                f"{family:11s} {size:>6s} {'x'.join(map(str, Image.open(io.BytesIO(rows['image_bytes'][0])).size)):>10s} "
                f"{'x'.join(map(str, first.size)):>10s} {share:9.3f} {exact_match(reduced_texts, answers):11.3f} "
                f"{exact_match(exact_texts, answers):8.3f} {time.perf_counter() - began:7.1f}"
            )
            print(line, flush=True)
            lines.append(line)
            parts.append(f"{family}@{size} {share:.3f}")
    print()
    print("(image/decoded: the first row's stored size and the size reduced decoding gives it)")
    print(header)
    print("-" * len(header))
    print("\n".join(lines))
    print()
    print("SUMMARY decode_agreement: captions equal to full decoding " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
