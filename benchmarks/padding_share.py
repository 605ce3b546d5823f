"""Benchmark 4: share of padded prompt tokens with and without length grouping, LLaVA-NeXT, mixed aspect ratios.

Run: python -m benchmarks.padding_share [--images 400] [--batch-size 8] [--window 4]
Prompt lengths come from a real-size LLaVA-NeXT processor (CLIP 336 px, patch 14, the llava-v1.6 anyres
pinpoints), built offline; image sizes are drawn from common photo shapes. The generate calls are planned exactly
as the model replicas plan them (llava_batch.operators.generation.length_grouping), so the shares are those the pipeline would pad.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = [
    (640, 480),
    (480, 640),
    (1024, 768),
    (1920, 1080),
    (1080, 1920),
    (512, 512),
    (1200, 300),
    (300, 900),
]


def prompt_lengths(count: int, seed: int) -> list[int]:
    from PIL import Image

    from benchmarks.common.models import REAL_SPECS, build_processor

    processor = build_processor(REAL_SPECS["llava_next"])
    rng = random.Random(seed)
    lengths = []
    for _ in range(count):
        width, height = rng.choice(SHAPES)
        scale = rng.uniform(0.5, 1.0)
        image = Image.new("RGB", (int(width * scale), int(height * scale)))
        text = "[INST] <image>\nDescribe this image. [/INST]"
        lengths.append(len(processor(text=[text], images=[image])["input_ids"][0]))
    return lengths


def main() -> int:
    from llava_batch.operators.generation.length_grouping import padding_counts, plan_generate_calls

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=int, default=4, help="batches a replica regroups at once")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    lengths = prompt_lengths(args.images, args.seed)
    window = args.batch_size * args.window
    counts = {False: [0, 0], True: [0, 0]}
    for start in range(0, len(lengths), window):  # a replica regroups one window at a time
        chunk = lengths[start : start + window]
        for grouped in (False, True):
            calls = plan_generate_calls(chunk, max_rows=args.batch_size, group_by_length=grouped)
            padded, total = padding_counts(chunk, calls)
            counts[grouped][0] += padded
            counts[grouped][1] += total
    without, with_grouping = (counts[flag][0] / counts[flag][1] for flag in (False, True))
    print(
        f"prompt lengths: min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}"
    )
    print(f"images {args.images}, batch {args.batch_size}, window {args.window} batches")
    print(f"padding share without grouping: {without:.1%}")
    print(f"padding share with grouping:    {with_grouping:.1%}")
    print(
        f"reduction: {without / with_grouping:.1f}x (bar: at least halved)"
        if with_grouping
        else "reduction: all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
