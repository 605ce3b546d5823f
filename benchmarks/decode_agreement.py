"""Benchmark: do captions change when JPEGs are decoded at reduced scale? Agreement with full decoding.

Run: python -m benchmarks.decode_agreement [--families llava llava_next] [--samples 100]
     [--sizes 12mp 1080p 480p]

The trained built-in checkpoints (builtin:llava, builtin:llava_next) caption held-out shape images
(llava_batch.training.shapes) scaled up, keeping their aspect ratio, to the area of a 12 MP photo (4032x3024),
of 1080p (1920x1080) and of 640x480, stored as JPEG quality 90. Each row is captioned twice through
PreprocessForModel + Generate (float32, greedy, as a caption job runs them): with the default reduced decoding and
with exact_decode=True. Reported per family and size: agreement (the share of rows whose caption is the same
text), the exact-match accuracy of both against the known answers, and the decode scale used.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time

import numpy as np
from PIL import Image

from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.training.oracle import MAX_NEW_TOKENS, exact_match
from llava_batch.training.shapes import Sample, samples

AREAS = {"12mp": 4032 * 3024, "1080p": 1920 * 1080, "480p": 640 * 480}
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
        "--families", nargs="+", choices=["llava", "llava_next"], default=["llava", "llava_next"]
    )
    parser.add_argument("--sizes", nargs="+", choices=list(AREAS), default=list(AREAS))
    parser.add_argument("--samples", type=int, default=100, help="held-out samples per family and size")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
