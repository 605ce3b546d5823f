"""Seeded synthetic images of simple coloured shapes, each with the exact answer to its family's task.

`samples(family, split, count, seed)` is deterministic: sample i of a split depends only on (family, split, seed, i),
and the train and held-out splits draw from disjoint seed streams. The tasks (prompt -> answer):

- llava: one shape, small to most of the image. "What is in the image?" -> "a red circle on the left" (left /
  in the center / right).
- llava_next: one small shape in a corner of an image of varied size and aspect ratio.
  "Where is the shape, and what is it?" -> "a blue square in the top left".
- vipllava: two or three shapes, one marked by a red box, ellipse or arrow (`visual_prompt`, drawn with
  operators/visual_prompt.py; the stored image is clean). "Which shape is marked?" -> "the green triangle".
- llava_interleave: two images per row. "Which image has more shapes?" -> "the first image" / "the second image";
  "Name the shape in each image." -> "circle, star". Or a clip's frames (3-8, in time order, one image each): one
  shape slides across a still background beside a still shape of another colour. "What moves in the video, and
  which way?" -> "the red shape moves left". `Sample.scene` renders the clip at any moment, so a test can write it
  as a real video file whose sampled frames are the ones the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from llava_batch.pipeline.families import FAMILIES

SPLITS: dict[str, int] = {"train": 1, "heldout": 2}  # part of every sample's seed: the splits never share one

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 150, 50),
    "blue": (35, 70, 215),
    "black": (25, 25, 25),
}
COLOUR_JITTER = 15  # per channel, so a colour is a small range rather than one exact value

# The words each family's answers use.
FAMILY_SHAPES: dict[str, tuple[str, ...]] = {
    "llava": SHAPES,
    # Small shapes in a squashed base image: the star and the triangle look alike there.
    "llava_next": ("circle", "square", "triangle"),
    "vipllava": SHAPES,
    "llava_interleave": SHAPES,
}
FAMILY_COLOURS: dict[str, tuple[str, ...]] = {
    "llava": ("red", "green", "blue", "black"),
    "llava_next": ("red", "green", "blue", "black"),
    # The marker is red, so the shapes are not.
    "vipllava": ("green", "blue", "black"),
    "llava_interleave": ("red", "green", "blue", "black"),
}

PROMPTS: dict[str, tuple[str, ...]] = {
    "llava": (
        "What is in the image?",
        "What do you see?",
        "Describe the image in a few words.",
        "Which shape is in the picture, and where is it?",
    ),
    "llava_next": (
        "Where is the shape, and what is it?",
        "What is in the image?",
        "Describe the image in a few words.",
    ),
    "vipllava": (
        "Which shape is marked?",
        "What does the red mark show?",
        "Name the marked shape.",
    ),
    "llava_interleave": (
        "Which image has more shapes?",
        "Name the shape in each image.",
        "What moves in the video, and which way?",
        "Which colour moves, and where to?",
    ),
}
VIDEO_PROMPTS = PROMPTS["llava_interleave"][2:]

# llava: the shape's centre lies in one of three separated horizontal bands (fractions of the width).
HORIZONTAL_BANDS: dict[str, tuple[float, float]] = {
    "on the left": (0.16, 0.32),
    "in the center": (0.42, 0.58),
    "on the right": (0.68, 0.84),
}
# llava images: the short side in pixels, and (width, height) ratios from 3:4 to 5:4. A wider image loses the
# left and right bands to CLIP's centre crop, so the answer would no longer be in the pixels the model sees.
LLAVA_SHORT_SIDE = (32, 224)
LLAVA_RATIOS = ((1, 1), (1, 1), (5, 4), (4, 5), (3, 4), (6, 5), (9, 10))
# The shape's circumradius as a fraction of the short side: from small to most of the image (large ones fit
# only in the centre band).
LLAVA_RADIUS = (0.09, 0.41)
# llava_next: (width, height) of many aspect ratios, so anyres picks different grids and token counts.
LLAVA_NEXT_SIZES = (
    (40, 90), (90, 40), (120, 60), (60, 120), (64, 64), (96, 48),
    (48, 96), (80, 80), (112, 56), (56, 112), (100, 70), (70, 100),
)  # fmt: skip
VIPLLAVA_SIDES = (48, 56, 64, 80, 96)
INTERLEAVE_SIZES = ((48, 48), (64, 64), (56, 48), (48, 56), (80, 64), (64, 80))
MARKERS = ("box", "ellipse", "arrow")
MARKER_COLOUR = "red"
ORDINALS = ("the first image", "the second image")
# llava_interleave's video task: frames of clips of these sizes, this many frames a row (--video-frames values).
VIDEO_SIZES = ((64, 48), (48, 64), (64, 64), (80, 60), (60, 80))
VIDEO_FRAME_COUNTS = (3, 4, 6, 8)
DIRECTIONS = ("left", "right", "up", "down")


@dataclass(frozen=True)
class DrawnShape:
    """One shape as drawn: what it is and where, in pixels of its image."""

    shape: str
    colour: str
    center: tuple[float, float]
    radius: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        x, y = self.center
        return (x - self.radius, y - self.radius, x + self.radius, y + self.radius)


@dataclass(frozen=True)
class MovingScene:
    """A clip: `mover` slides in a straight line from its centre (at the start) to `end` (at the end) over a still
    background that holds the still shapes. Times are fractions of the clip's duration, 0 to 1."""

    still: Image.Image  # the background with the still shapes drawn
    still_shapes: list[DrawnShape]
    mover: DrawnShape
    end: tuple[float, float]
    fill: tuple[int, int, int]  # the mover's colour, the same in every frame

    def mover_at(self, time: float) -> DrawnShape:
        (x0, y0), (x1, y1) = self.mover.center, self.end
        center = (x0 + (x1 - x0) * time, y0 + (y1 - y0) * time)
        return DrawnShape(self.mover.shape, self.mover.colour, center, self.mover.radius)

    def frame(self, time: float) -> Image.Image:
        image = self.still.copy()
        _fill(image, self.mover_at(time), self.fill)
        return image


def sampled_times(count: int) -> list[float]:
    """The middle of each of `count` equal spans of a clip: where the video reader samples `count` frames
    (llava_batch.operators.video.frame_targets, as fractions of the duration)."""
    return [(index + 0.5) / count for index in range(count)]


@dataclass(frozen=True)
class Sample:
    images: list[Image.Image]  # clean images, in prompt order
    prompt: str
    answer: str
    visual_prompt: (
        dict[str, Any] | None
    )  # vipllava: the annotation to draw with llava_batch.operators.visual_prompt
    shapes: list[list[DrawnShape]] = field(default_factory=list)  # per image, what was drawn (for checks)
    scene: MovingScene | None = None  # the video task: the clip whose sampled frames are `images`


def samples(family: str, split: str, count: int, seed: int) -> list[Sample]:
    """`count` samples of `family`'s task; sample i is the same whatever `count` is."""
    if family not in _GENERATORS:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if count < 0 or seed < 0:
        raise ValueError(f"count and seed must be >= 0, got count={count}, seed={seed}")
    family_code = FAMILIES.index(family)
    generate = _GENERATORS[family]
    return [
        generate(np.random.default_rng(np.random.SeedSequence([SPLITS[split], family_code, seed, index])))
        for index in range(count)
    ]


def answer_words(family: str) -> list[str]:
    """Every answer `family`'s task can have, in a fixed order."""
    colours, shapes = FAMILY_COLOURS[family], FAMILY_SHAPES[family]
    if family == "llava":
        return [f"a {c} {s} {p}" for c in colours for s in shapes for p in HORIZONTAL_BANDS]
    if family == "llava_next":
        corners = [f"{v} {h}" for v in ("top", "bottom") for h in ("left", "right")]
        return [f"a {c} {s} in the {corner}" for c in colours for s in shapes for corner in corners]
    if family == "vipllava":
        return [f"the {c} {s}" for c in colours for s in shapes]
    motions = [f"the {c} shape moves {d}" for c in colours for d in DIRECTIONS]
    return list(ORDINALS) + [f"{a}, {b}" for a in shapes for b in shapes] + motions


def tokenizer_corpus() -> str:
    """Every prompt and answer of every family, one a line: the trained models' tokenizers learn their merges
    from it, so an answer is a few tokens instead of one token per letter."""
    lines = [prompt for family in FAMILIES for prompt in PROMPTS[family]]
    lines += [answer for family in FAMILIES for answer in answer_words(family)]
    return "\n".join(lines)


# --- drawing ---------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A light tint that fades into a second light tint along a random direction, plus faint noise."""
    start = rng.uniform(195, 255, 3)
    end = rng.uniform(195, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = (xs / max(width - 1, 1)) * np.cos(angle) + (ys / max(height - 1, 1)) * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9)
    pixels = start + (end - start) * ramp[..., None]
    pixels += rng.normal(0, rng.uniform(0, 6), (height, width, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _colour_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
    return tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of an upright shape with circumradius r, centred (centroid) on (cx, cy)."""
    if shape == "square":
        half = r * 0.85  # so a square looks about as large as a circle of radius r
        return [
            (cx - half, cy - half),
            (cx + half, cy - half),
            (cx + half, cy + half),
            (cx - half, cy + half),
        ]
    if shape == "triangle":
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.radians([-90, 30, 150])]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = np.radians(-90 + 36 * k)
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def _draw(image: Image.Image, rng: np.random.Generator, item: DrawnShape) -> None:
    _fill(image, item, _colour_rgb(rng, item.colour))


def _fill(image: Image.Image, item: DrawnShape, fill: tuple[int, int, int]) -> None:
    draw = ImageDraw.Draw(image)
    cx, cy = item.center
    if item.shape == "circle":
        draw.ellipse(item.xyxy, fill=fill)
    else:
        draw.polygon(_outline(item.shape, cx, cy, item.radius), fill=fill)


def _render(rng: np.random.Generator, size: tuple[int, int], items: list[DrawnShape]) -> Image.Image:
    image = Image.fromarray(_background(rng, *size))
    for item in items:
        _draw(image, rng, item)
    return image


def _pick(rng: np.random.Generator, options: tuple) -> Any:
    return options[int(rng.integers(len(options)))]


def _grid_shapes(
    rng: np.random.Generator,
    size: tuple[int, int],
    count: int,
    radius_range: tuple[float, float],
    colours: tuple[str, ...],
    distinct: bool,
) -> list[DrawnShape]:
    """`count` shapes in distinct cells of a 2x2 grid (so they never overlap), jittered inside their cells."""
    width, height = size
    side = min(width, height)
    cells = rng.permutation(4)[:count]
    kinds: list[tuple[str, str]] = []
    while len(kinds) < count:
        kind = (_pick(rng, colours), _pick(rng, SHAPES))
        if not distinct or kind not in kinds:
            kinds.append(kind)
    items = []
    for cell, (colour, shape) in zip(cells, kinds):
        fx = (0.27 if cell % 2 == 0 else 0.73) + rng.uniform(-0.03, 0.03)
        fy = (0.27 if cell // 2 == 0 else 0.73) + rng.uniform(-0.03, 0.03)
        radius = side * rng.uniform(*radius_range)
        items.append(DrawnShape(shape, colour, (fx * width, fy * height), radius))
    return items


# --- tasks -----------------------------------------------------------------------------------------------


def _llava(rng: np.random.Generator) -> Sample:
    ratio_w, ratio_h = _pick(rng, LLAVA_RATIOS)
    short = int(rng.integers(LLAVA_SHORT_SIDE[0], LLAVA_SHORT_SIDE[1] + 1))
    width, height = (
        (short * ratio_w // ratio_h, short) if ratio_w >= ratio_h else (short, short * ratio_h // ratio_w)
    )
    colour, shape = _pick(rng, FAMILY_COLOURS["llava"]), _pick(rng, FAMILY_SHAPES["llava"])
    position = _pick(rng, tuple(HORIZONTAL_BANDS))
    low, high = HORIZONTAL_BANDS[position]
    # The whole shape stays inside the image: its reach from the centre bounds the radius in this band.
    reach = {"on the left": high * width, "on the right": (1 - low) * width, "in the center": width / 2}[
        position
    ]
    largest = min(LLAVA_RADIUS[1] * short, reach - 1, height / 2 - 1)
    radius = rng.uniform(LLAVA_RADIUS[0] * short, max(LLAVA_RADIUS[0] * short, largest))
    x_low, x_high = max(low * width, radius + 1), min(high * width, width - radius - 1)
    y_low, y_high = max(0.3 * height, radius + 1), min(0.7 * height, height - radius - 1)
    center = (rng.uniform(x_low, max(x_low, x_high)), rng.uniform(y_low, max(y_low, y_high)))
    item = DrawnShape(shape, colour, center, radius)
    image = Image.fromarray(_llava_background(rng, width, height))
    _draw_smooth(image, rng, item)
    return Sample([image], _pick(rng, PROMPTS["llava"]), f"a {colour} {shape} {position}", None, [[item]])


def _llava_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """One of three kinds: a linear two-tone gradient (`_background`), one flat tint, or a radial gradient."""
    kind = int(rng.integers(3))
    if kind == 0:
        return _background(rng, width, height)
    start = rng.uniform(195, 255, 3)
    if kind == 1:
        pixels = np.broadcast_to(start, (height, width, 3)).copy()
    else:
        end = rng.uniform(195, 255, 3)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ramp = np.hypot(xs - cx, ys - cy)
        ramp /= max(float(ramp.max()), 1e-9)
        pixels = start + (end - start) * ramp[..., None]
    pixels += rng.normal(0, rng.uniform(0, 4), (height, width, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


SMOOTH_SCALE = 4  # llava shapes are drawn at 4x into a mask and shrunk: anti-aliased edges


def _draw_smooth(image: Image.Image, rng: np.random.Generator, item: DrawnShape) -> None:
    """The shape with anti-aliased edges and varied proportions: a square's half side 0.8-0.9 r, a triangle
    from slim to wide, a star's inner radius 0.38-0.5 r (other drawing programs use other conventions)."""
    fill = _colour_rgb(rng, item.colour)
    scale = SMOOTH_SCALE
    mask = Image.new("L", (image.width * scale, image.height * scale), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = item.center[0] * scale, item.center[1] * scale, item.radius * scale
    if item.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif item.shape == "square":
        half = r * rng.uniform(0.8, 0.9)
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=255)
    elif item.shape == "triangle":
        half_base, base = r * rng.uniform(0.85, 1.0), r * rng.uniform(0.5, 0.8)
        draw.polygon([(cx, cy - r), (cx + half_base, cy + base), (cx - half_base, cy + base)], fill=255)
    else:
        inner = rng.uniform(0.38, 0.5)
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * inner
            angle = np.radians(-90 + 36 * k)
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        draw.polygon(points, fill=255)
    alpha = mask.resize(image.size, Image.Resampling.BOX)
    image.paste(Image.new("RGB", image.size, fill), (0, 0), alpha)


def _llava_next(rng: np.random.Generator) -> Sample:
    width, height = _pick(rng, LLAVA_NEXT_SIZES)
    colour, shape = _pick(rng, FAMILY_COLOURS["llava_next"]), _pick(rng, FAMILY_SHAPES["llava_next"])
    vertical, horizontal = _pick(rng, ("top", "bottom")), _pick(rng, ("left", "right"))
    fx = rng.uniform(0.25, 0.32) if horizontal == "left" else rng.uniform(0.68, 0.75)
    fy = rng.uniform(0.25, 0.32) if vertical == "top" else rng.uniform(0.68, 0.75)
    item = DrawnShape(shape, colour, (fx * width, fy * height), min(width, height) * rng.uniform(0.18, 0.24))
    image = _render(rng, (width, height), [item])
    answer = f"a {colour} {shape} in the {vertical} {horizontal}"
    return Sample([image], _pick(rng, PROMPTS["llava_next"]), answer, None, [[item]])


def _vipllava(rng: np.random.Generator) -> Sample:
    side = int(_pick(rng, VIPLLAVA_SIDES))
    count = int(rng.integers(2, 4))
    items = _grid_shapes(rng, (side, side), count, (0.11, 0.15), FAMILY_COLOURS["vipllava"], distinct=True)
    image = _render(rng, (side, side), items)
    target = items[int(rng.integers(count))]
    marker = _pick(rng, MARKERS)
    margin = side * rng.uniform(0.03, 0.06)
    reach = target.radius * (1.45 if marker == "ellipse" else 1.0) + margin  # an ellipse needs more room
    cx, cy = target.center
    annotation: dict[str, Any] = {
        "shape": marker,
        "xyxy": [round(cx - reach, 1), round(cy - reach, 1), round(cx + reach, 1), round(cy + reach, 1)],
        "color": MARKER_COLOUR,
        "width": max(2, round(side / 24)),
    }
    if marker == "arrow":
        # From the middle of an empty grid cell, so the arrow is long and crosses no other shape.
        taken = {(item.center[0] > side / 2, item.center[1] > side / 2) for item in items}
        empty = [
            (right, low) for right in (False, True) for low in (False, True) if (right, low) not in taken
        ]
        right, low = empty[int(rng.integers(len(empty)))]
        tail_x = side * ((0.73 if right else 0.27) + rng.uniform(-0.05, 0.05))
        tail_y = side * ((0.73 if low else 0.27) + rng.uniform(-0.05, 0.05))
        annotation["tail"] = [round(tail_x, 1), round(tail_y, 1)]
    prompt = _pick(rng, PROMPTS["vipllava"])
    return Sample([image], prompt, f"the {target.colour} {target.shape}", annotation, [items])


def _moving_shape(rng: np.random.Generator) -> Sample:
    """The video task: one shape slides across half the frame while a shape of another colour stays put in the
    other half, so only the frames together tell which colour moves and which way."""
    width, height = _pick(rng, VIDEO_SIZES)
    side = min(width, height)
    colours = FAMILY_COLOURS["llava_interleave"]
    moving_colour, still_colour = (colours[int(i)] for i in rng.choice(len(colours), size=2, replace=False))
    direction = _pick(rng, DIRECTIONS)
    horizontal = direction in ("left", "right")
    # The path runs along one half (a band at 0.27 or 0.73 across it); the still shape sits in the other half.
    lane, other = (0.27, 0.73) if rng.random() < 0.5 else (0.73, 0.27)
    start, stop = rng.uniform(0.18, 0.28), rng.uniform(0.72, 0.82)
    if direction in ("left", "up"):
        start, stop = 1 - start, 1 - stop
    across = lane + rng.uniform(-0.03, 0.03)
    still_along, still_across = rng.uniform(0.25, 0.75), other + rng.uniform(-0.03, 0.03)

    def point(along: float, across: float) -> tuple[float, float]:
        return (along * width, across * height) if horizontal else (across * width, along * height)

    mover = DrawnShape(
        _pick(rng, SHAPES), moving_colour, point(start, across), side * rng.uniform(0.13, 0.17)
    )
    still = DrawnShape(
        _pick(rng, SHAPES), still_colour, point(still_along, still_across), side * rng.uniform(0.13, 0.17)
    )
    background = _render(rng, (width, height), [still])
    scene = MovingScene(background, [still], mover, point(stop, across), _colour_rgb(rng, moving_colour))
    times = sampled_times(int(_pick(rng, VIDEO_FRAME_COUNTS)))
    return Sample(
        [scene.frame(time) for time in times],
        _pick(rng, VIDEO_PROMPTS),
        f"the {moving_colour} shape moves {direction}",
        None,
        [[still, scene.mover_at(time)] for time in times],
        scene,
    )


def _llava_interleave(rng: np.random.Generator) -> Sample:
    task = rng.random()
    if task >= 0.5:  # half the rows: the video task is the hardest to learn
        return _moving_shape(rng)
    sizes = [_pick(rng, INTERLEAVE_SIZES) for _ in range(2)]
    if task < 0.25:
        counts = [int(c) for c in rng.choice([1, 2, 3], size=2, replace=False)]
        per_image = [
            _grid_shapes(rng, size, count, (0.1, 0.14), FAMILY_COLOURS["llava_interleave"], distinct=False)
            for size, count in zip(sizes, counts)
        ]
        prompt, answer = PROMPTS["llava_interleave"][0], ORDINALS[int(np.argmax(counts))]
    else:
        per_image = []
        for width, height in sizes:
            center = (width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6))
            colour = _pick(rng, FAMILY_COLOURS["llava_interleave"])
            shape = _pick(rng, FAMILY_SHAPES["llava_interleave"])
            per_image.append([DrawnShape(shape, colour, center, min(width, height) * rng.uniform(0.2, 0.3))])
        prompt = PROMPTS["llava_interleave"][1]
        answer = ", ".join(items[0].shape for items in per_image)
    images = [_render(rng, size, items) for size, items in zip(sizes, per_image)]
    return Sample(images, prompt, answer, None, per_image)


_GENERATORS = {
    "llava": _llava,
    "llava_next": _llava_next,
    "vipllava": _vipllava,
    "llava_interleave": _llava_interleave,
}
