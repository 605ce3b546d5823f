"""The inputs the benchmarks feed: synthetic photo-like JPEGs (on disk and as bytes) with captioning prompts of
different lengths, optionally several prompts per image, and folders of small PNGs for the driver benchmarks."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_IMAGE_PIXELS = 50_000_000
# Captioning prompts of different lengths, so batches need (left) padding as real ones do.
PROMPTS = (
    "Describe this image.",
    "Write a short caption for this picture.",
    "What is shown in this image? Describe the image in more details.",
    "Describe the scene, the objects in it and their colours, in two sentences.",
)


@dataclass(frozen=True)
class Inputs:
    ids: list[str]
    paths: list[Path]
    payloads: list[bytes]
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, count: int) -> Inputs:
        return Inputs(self.ids[:count], self.paths[:count], self.payloads[:count], self.prompts[:count])

    def with_prompts_per_image(self, count: int) -> Inputs:
        """Each image under the first `count` PROMPTS, image-major, as a prompt set (`--prompts-file`) or the
        questions of `instruct` reach the model: rows are then (image, prompt) pairs."""
        if count == 1:
            return self
        if not 1 <= count <= len(PROMPTS):
            raise ValueError(f"prompts per image: 1 to {len(PROMPTS)}, got {count}")
        pairs = [(index, prompt) for index in range(len(self)) for prompt in PROMPTS[:count]]
        return Inputs(
            [f"{self.ids[index]}#{PROMPTS.index(prompt)}" for index, prompt in pairs],
            [self.paths[index] for index, _ in pairs],
            [self.payloads[index] for index, _ in pairs],
            [prompt for _, prompt in pairs],
        )


def synthetic_jpeg(width: int, height: int, rng: np.random.Generator, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth colour gradients, a few flat shapes and sensor-like noise."""
    from PIL import Image, ImageDraw

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        channels.append(127 + 100 * np.sin(2 * np.pi * (fx * xs / width + fy * ys / height) + phase))
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        x1 = min(width - 1, x0 + int(rng.integers(1, max(2, width // 3))))
        y1 = min(height - 1, y0 + int(rng.integers(1, max(2, height // 3))))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_inputs(out_dir: Path, count: int, *, width: int = 640, height: int = 480, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, paths, payloads, prompts = [], [], [], []
    for index in range(count):
        payload = synthetic_jpeg(width, height, rng)
        path = out_dir / f"image-{index:04d}.jpg"
        path.write_bytes(payload)
        ids.append(f"image-{index:04d}")
        paths.append(path)
        payloads.append(payload)
        prompts.append(PROMPTS[index % len(PROMPTS)])
    return Inputs(ids, paths, payloads, prompts)


def images_for(batch_size: int, min_images: int) -> int:
    """Whole batches, at least `min_images` images."""
    batches = max(1, -(-min_images // batch_size))
    return batches * batch_size


def write_png_folder(folder: Path, rows: int, *, distinct: bool) -> None:
    """`rows` 16x16 PNG files for the driver benchmarks, 1,000 per sub-folder (directory listings stay sane at
    100k files). `distinct`: each its own colour; otherwise one image written `rows` times (faster)."""
    from PIL import Image

    def png(colour: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
        return buffer.getvalue()

    same = None if distinct else png((10, 20, 128))
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(rows):
        sub = folder / f"{index // 1000:04d}"
        sub.mkdir(exist_ok=True)
        data = same or png((index % 256, (index // 256) % 256, 128))
        (sub / f"{index:07d}.png").write_bytes(data)
