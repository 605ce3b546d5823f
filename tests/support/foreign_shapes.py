"""The llava task's images as another program would draw them: not `training/shapes.py`'s conventions.

Independent of the training generator on purpose: plain solid, vertical or radial backgrounds (no noise);
shapes sized by their bounding box from a fifth of the short side to most of it (a triangle is as wide as it is
high, a star has a pentagram's inner radius); pure or other-shade colours; images 64-224 pixels, square or
mildly non-square; edges anti-aliased by drawing the shape at 4x and shrinking it; PNG or JPEG bytes. The answer uses the
task's words: `a red circle on the left` (the centre in the left, middle or right band of the width).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
# Other shades than the training palette: pure primaries, web colours, darker and lighter variants.
PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (200, 0, 0), (230, 40, 40), (190, 30, 45)),
    "green": ((0, 128, 0), (20, 170, 40), (0, 110, 50), (60, 160, 60)),
    "blue": ((0, 0, 255), (20, 60, 200), (0, 0, 160), (50, 90, 230)),
    "black": ((0, 0, 0), (30, 30, 30), (45, 40, 40), (15, 20, 30)),
}
# Centre of the shape as a fraction of the width, per answer; the shape never leaves the image.
BANDS = {"on the left": (0.18, 0.30), "in the center": (0.44, 0.56), "on the right": (0.70, 0.82)}
# (width, height) ratios: square, landscape up to 5:4 and portrait up to 3:4 (the CLIP centre crop of a wider
# image cuts off the left and right bands, so such an image has no right answer through a 336-crop model either).
RATIOS = ((1, 1), (1, 1), (5, 4), (4, 5), (3, 4), (6, 5))
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ForeignImage:
    data: bytes  # encoded image, PNG or JPEG
    answer: str
    shape: str
    colour: str
    position: str
    size: tuple[int, int]
    extent: float  # bounding-box side as a fraction of the image's short side


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    kind = rng.integers(3)
    light = rng.uniform(215, 255, 3)
    if kind == 0:  # one flat colour, as most drawing programs start
        return np.broadcast_to(light, (height, width, 3)).copy()
    other = rng.uniform(200, 255, 3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    if kind == 1:  # top to bottom
        ramp = ys / max(height - 1, 1)
    else:  # radial, from the centre outwards
        ramp = np.hypot(xs - width / 2, ys - height / 2) / np.hypot(width / 2, height / 2)
    return light + (other - light) * ramp[..., None]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, fill) -> None:
    """`half`: half the side of the shape's bounding box."""
    if shape == "circle":
        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "triangle":  # isosceles, as wide as it is high, centred on its bounding box
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    else:  # a five-pointed star whose outer points span the box; pentagram inner radius 0.382
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * 0.382
            angle = np.radians(-90 + 36 * k)
            points.append((cx + radius * np.cos(angle), cy + half * 0.1 + radius * np.sin(angle)))
        draw.polygon(points, fill=fill)


def draw(rng: np.random.Generator, min_extent: float = 0.2, max_extent: float = 0.8) -> ForeignImage:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = tuple(PALETTE)[int(rng.integers(len(PALETTE)))]
    fill = PALETTE[colour][int(rng.integers(len(PALETTE[colour])))]
    rw, rh = RATIOS[int(rng.integers(len(RATIOS)))]
    short = int(rng.integers(64, 225))
    width, height = (round(short * rw / rh), short) if rw >= rh else (short, round(short * rh / rw))
    position = tuple(BANDS)[int(rng.integers(len(BANDS)))]
    low, high = BANDS[position]
    # The largest box whose centre can sit in the band with the whole shape inside the image.
    room = {
        "on the left": 2 * width * high / short,
        "on the right": 2 * width * (1 - low) / short,
        "in the center": 1.0,
    }[position]
    extent = float(rng.uniform(min_extent, min(max_extent, room * 0.95, 0.95)))
    half = extent * short / 2
    cx_low, cx_high = max(low * width, half + 1), min(high * width, width - half - 1)
    cx = float(rng.uniform(cx_low, max(cx_low, cx_high)))
    cy = float(rng.uniform(max(half + 1, 0.3 * height), max(half + 1, min(0.7 * height, height - half - 1))))

    background = np.clip(np.rint(_background(rng, width, height)), 0, 255).astype(np.uint8)
    # The shape on a transparent layer four times as large, shrunk with Lanczos and laid over the background.
    s = SUPERSAMPLE
    layer = Image.new("RGBA", (width * s, height * s), (*fill, 0))
    _draw_shape(ImageDraw.Draw(layer), shape, cx * s, cy * s, half * s, (*fill, 255))
    image = Image.alpha_composite(
        Image.fromarray(background).convert("RGBA"), layer.resize((width, height), Image.Resampling.LANCZOS)
    ).convert("RGB")
    buffer = io.BytesIO()
    if rng.random() < 0.5:
        image.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
    else:
        image.save(buffer, format="PNG")
    answer = f"a {colour} {shape} {position}"
    return ForeignImage(buffer.getvalue(), answer, shape, colour, position, (width, height), extent)


def foreign_images(count: int, seed: int, **extent) -> list[ForeignImage]:
    """`count` images; image i depends only on (seed, i)."""
    return [draw(np.random.default_rng([seed, index]), **extent) for index in range(count)]


def pipeline_rows(images: list[ForeignImage], prompt: str) -> dict[str, np.ndarray]:
    """A batch in the pipeline's input format (`id`, `image_bytes`, `prompt`), as a caption job reads it."""
    image_bytes = np.empty(len(images), dtype=object)
    for index, image in enumerate(images):
        image_bytes[index] = image.data
    return {
        "id": np.array([f"foreign-{index:04d}" for index in range(len(images))], dtype=object),
        "image_bytes": image_bytes,
        "prompt": np.array([prompt] * len(images), dtype=object),
    }


def attribute_accuracy(texts: list[str | None], images: list[ForeignImage]) -> dict[str, float]:
    """Exact match, and how often the answer names the right shape, colour and position."""
    scores = {"exact": 0, "shape": 0, "colour": 0, "position": 0}
    for text, image in zip(texts, images, strict=True):
        text = (text or "").strip()
        scores["exact"] += text == image.answer
        scores["shape"] += f" {image.shape} " in f" {text} "
        scores["colour"] += f" {image.colour} " in f" {text} "
        scores["position"] += text.endswith(image.position)
    return {name: hits / max(len(images), 1) for name, hits in scores.items()}
