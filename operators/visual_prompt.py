"""Draw a VipLLaVA visual prompt (a box, ellipse or arrow marking one region) onto an image, from an annotation.

Reads the `visual_prompt` column (a JSON string or dict per row, see `parse_visual_prompt`); draws on the decoded image.
"""

from __future__ import annotations

import json
import math
from typing import Any

from PIL import Image, ImageColor, ImageDraw

SHAPES = ("box", "ellipse", "arrow")
DEFAULT_COLOR = "red"  # what VipLLaVA's own visual prompts use most
DEFAULT_WIDTH = 2
_FIELDS = ("shape", "xyxy", "color", "width", "tail")


def parse_visual_prompt(value: str | dict[str, Any]) -> dict[str, Any]:
    """Validate an annotation and return it normalised: {"shape", "xyxy", "color", "width", "tail"}.

    `shape`: "box", "ellipse" or "arrow". `xyxy`: [x0, y0, x1, y1], the marked region in pixels of the original
    image (x0 < x1, y0 < y1; it may reach outside the image). `color`: a colour name PIL knows ("red") or
    [r, g, b] with 0-255 ints (default red). `width`: line width in pixels, a positive int (default 2).
    `tail`: arrows only, [x, y] where the arrow starts; by default it starts outside the region, away from the
    image centre. The arrow's head touches the region's edge on the line from the tail to the region's centre.
    Raises ValueError naming the bad field.
    """
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"visual_prompt: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"visual_prompt: expected a JSON object or dict, got {type(value).__name__}")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise ValueError(f"visual_prompt: unknown field(s) {unknown}; known fields: {list(_FIELDS)}")

    shape = value.get("shape")
    if shape not in SHAPES:
        raise ValueError(f"visual_prompt.shape: {shape!r} is not one of {list(SHAPES)}")

    xyxy = _numbers(value.get("xyxy"), 4, "xyxy")
    if not (xyxy[0] < xyxy[2] and xyxy[1] < xyxy[3]):
        raise ValueError(f"visual_prompt.xyxy: {xyxy} must have x0 < x1 and y0 < y1")

    color = _color(value.get("color", DEFAULT_COLOR))

    width = value.get("width", DEFAULT_WIDTH)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"visual_prompt.width: {width!r} must be a positive integer (pixels)")

    tail = value.get("tail")
    if tail is not None:
        if shape != "arrow":
            raise ValueError(f"visual_prompt.tail: only arrows have a tail, not a {shape}")
        tail = _numbers(tail, 2, "tail")
    return {"shape": shape, "xyxy": xyxy, "color": color, "width": width, "tail": tail}


def draw_visual_prompt(image: Image.Image, annotation: str | dict[str, Any]) -> Image.Image:
    """A new RGB image with the annotation drawn on it; the input image is left unchanged."""
    spec = parse_visual_prompt(annotation)
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    draw = ImageDraw.Draw(out)
    x0, y0, x1, y1 = spec["xyxy"]
    color, width = spec["color"], spec["width"]
    if spec["shape"] == "box":
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
    elif spec["shape"] == "ellipse":
        draw.ellipse((x0, y0, x1, y1), outline=color, width=width)
    else:
        tail = spec["tail"] or default_arrow_tail(spec["xyxy"], out.size)
        _draw_arrow(draw, tail, _edge_point(spec["xyxy"], tail), color, width)
    return out


def default_arrow_tail(xyxy: list[float], image_size: tuple[int, int]) -> tuple[float, float]:
    """Start the arrow one region-diagonal away from the region, on the side away from the image centre."""
    x0, y0, x1, y1 = xyxy
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    dx = 1.0 if cx >= image_size[0] / 2 else -1.0
    dy = 1.0 if cy >= image_size[1] / 2 else -1.0
    reach = max(x1 - x0, y1 - y0) / 2 + max(4.0, 0.6 * max(x1 - x0, y1 - y0))
    tail_x = min(max(cx + dx * reach, 0.0), image_size[0] - 1.0)
    tail_y = min(max(cy + dy * reach, 0.0), image_size[1] - 1.0)
    return tail_x, tail_y


def _edge_point(xyxy: list[float], tail: tuple[float, float]) -> tuple[float, float]:
    """Where the line from `tail` to the region's centre crosses the region's edge (the centre if inside)."""
    x0, y0, x1, y1 = xyxy
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    dx, dy = tail[0] - cx, tail[1] - cy
    scales = [abs((x1 - x0) / 2 / dx) if dx else math.inf, abs((y1 - y0) / 2 / dy) if dy else math.inf]
    scale = min(scales)
    if scale >= 1.0:  # the tail lies inside the region
        return cx, cy
    return cx + dx * scale, cy + dy * scale


def _draw_arrow(
    draw: ImageDraw.ImageDraw, tail: tuple[float, float], head: tuple[float, float], color: tuple, width: int
) -> None:
    draw.line((tail, head), fill=color, width=width)
    angle = math.atan2(head[1] - tail[1], head[0] - tail[0])
    barb = max(3.0, 2.5 * width)
    for side in (-1, 1):
        spread = angle + math.pi + side * math.radians(30)
        end = (head[0] + barb * math.cos(spread), head[1] + barb * math.sin(spread))
        draw.line((head, end), fill=color, width=width)


def _numbers(value: Any, count: int, field: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ValueError(f"visual_prompt.{field}: expected a list of {count} numbers, got {value!r}")
    if any(isinstance(item, bool) or not isinstance(item, (int, float)) for item in value):
        raise ValueError(f"visual_prompt.{field}: expected a list of {count} numbers, got {value!r}")
    if not all(math.isfinite(item) for item in value):
        raise ValueError(f"visual_prompt.{field}: numbers must be finite, got {value!r}")
    return [float(item) for item in value]


def _color(value: Any) -> tuple[int, int, int]:
    if isinstance(value, str):
        try:
            return ImageColor.getrgb(value)[:3]
        except ValueError:
            raise ValueError(f"visual_prompt.color: unknown colour name {value!r}") from None
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 255 for item in value)
    ):
        return tuple(value)
    raise ValueError(f"visual_prompt.color: {value!r} must be a colour name or [r, g, b] with ints 0-255")
