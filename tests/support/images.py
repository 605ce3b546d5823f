"""Small deterministic test images, written as files of several formats and sizes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# (width, height): different sizes and aspect ratios, so LLaVA-NeXT rows get different image-token counts.
SIZES = [(40, 30), (90, 120), (64, 64), (150, 50), (33, 77), (120, 90)]


def make_image(index: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(index)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array)


def image_bytes(index: int, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    make_image(index, size).save(buffer, format=fmt)
    return buffer.getvalue()


def write_images(folder: Path, count: int) -> list[str]:
    """Writes `count` images named img-000.png/jpg..., alternating PNG and JPEG; returns the relative names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        fmt, ext = ("PNG", "png") if index % 2 == 0 else ("JPEG", "jpg")
        name = f"img-{index:03d}.{ext}"
        (folder / name).write_bytes(image_bytes(index, SIZES[index % len(SIZES)], fmt))
        names.append(name)
    return names
