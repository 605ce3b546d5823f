import json

import numpy as np
import pytest
from PIL import Image

from llava_batch.operators.visual_prompt import draw_visual_prompt, parse_visual_prompt

GREY = (128, 128, 128)
RED = (255, 0, 0)


def grey(width: int = 40, height: int = 30) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def is_colour(array: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (array == np.array(colour)).all(axis=-1)


def test_box_outline_has_the_colour_at_its_edges_and_leaves_the_rest_untouched():
    image = grey()
    out = pixels(
        draw_visual_prompt(image, {"shape": "box", "xyxy": [10, 5, 30, 20], "color": "red", "width": 2})
    )
    # Edges: two pixels thick, inward from xyxy (PIL draws the outline inside the box).
    assert is_colour(out[5:7, 10:31], RED).all()  # top
    assert is_colour(out[19:21, 10:31], RED).all()  # bottom
    assert is_colour(out[5:21, 10:12], RED).all()  # left
    assert is_colour(out[5:21, 29:31], RED).all()  # right
    # Inside and outside are the original pixels; nothing else changed.
    assert is_colour(out[7:19, 12:29], GREY).all()
    outline = np.zeros(out.shape[:2], dtype=bool)
    outline[5:21, 10:31] = True
    outline[7:19, 12:29] = False
    assert is_colour(out[~outline], GREY).all()
    assert is_colour(out[outline], RED).all()
    # The input image is not modified.
    assert is_colour(pixels(image), GREY).all()


def test_ellipse_touches_the_box_edges_at_their_middles_but_not_the_corners():
    out = pixels(
        draw_visual_prompt(grey(), {"shape": "ellipse", "xyxy": [4, 4, 36, 26], "color": [0, 0, 255]})
    )
    blue = is_colour(out, (0, 0, 255))
    assert blue[4, 20] and blue[26, 20] and blue[15, 4] and blue[15, 36]  # top, bottom, left, right middles
    assert not blue[4, 4] and not blue[26, 36]  # corners of the box stay grey
    assert is_colour(out[12:18, 16:24], GREY).all()  # the middle is untouched
    assert blue.sum() > 50


def test_arrow_runs_from_the_tail_to_the_edge_of_the_region():
    annotation = {"shape": "arrow", "xyxy": [24, 10, 34, 20], "tail": [2, 15], "color": "red", "width": 1}
    out = pixels(draw_visual_prompt(grey(), annotation))
    red = is_colour(out, RED)
    assert red[15, 2:24].all()  # the horizontal shaft from the tail up to the region's left edge
    assert not red[15, 25:].any()  # it stops at the edge: the marked region itself is not drawn over
    assert red[12:15, 19:24].any() and red[16:19, 19:24].any()  # two barbs near the head


def test_arrow_without_a_tail_starts_outside_the_region():
    out = pixels(draw_visual_prompt(grey(60, 60), {"shape": "arrow", "xyxy": [10, 10, 20, 20]}))
    red = is_colour(out, RED)
    assert red.sum() > 5
    assert not red[11:20, 11:20].any()  # nothing drawn inside the marked region
    assert red[:10, :10].any()  # the region is in the top left quarter: the arrow comes from the corner side


def test_json_string_and_defaults():
    parsed = parse_visual_prompt(json.dumps({"shape": "box", "xyxy": [0, 0, 5.5, 3]}))
    assert parsed == {"shape": "box", "xyxy": [0.0, 0.0, 5.5, 3.0], "color": RED, "width": 2, "tail": None}
    assert parse_visual_prompt(parsed) == parsed  # already normalised annotations pass through unchanged


def test_coordinates_outside_the_image_are_drawn_clipped():
    out = pixels(draw_visual_prompt(grey(), {"shape": "box", "xyxy": [-10, -10, 20, 15], "width": 1}))
    assert is_colour(out[15, 0:21], RED).all() and is_colour(out[0:16, 20], RED).all()
    assert is_colour(out[0:15, 0:20], GREY).all()


@pytest.mark.parametrize(
    ("annotation", "field"),
    [
        ({"shape": "star", "xyxy": [0, 0, 1, 1]}, "visual_prompt.shape"),
        ({"xyxy": [0, 0, 1, 1]}, "visual_prompt.shape"),
        ({"shape": "box"}, "visual_prompt.xyxy"),
        ({"shape": "box", "xyxy": [0, 0, 1]}, "visual_prompt.xyxy"),
        ({"shape": "box", "xyxy": [0, 0, "1", 1]}, "visual_prompt.xyxy"),
        ({"shape": "box", "xyxy": [5, 0, 1, 1]}, "visual_prompt.xyxy"),
        ({"shape": "box", "xyxy": [0, 3, 1, 3]}, "visual_prompt.xyxy"),
        ({"shape": "box", "xyxy": [0, 0, float("nan"), 1]}, "visual_prompt.xyxy"),
        ({"shape": "box", "xyxy": [0, 0, 1, 1], "color": "reddish"}, "visual_prompt.color"),
        ({"shape": "box", "xyxy": [0, 0, 1, 1], "color": [255, 0]}, "visual_prompt.color"),
        ({"shape": "box", "xyxy": [0, 0, 1, 1], "color": [256, 0, 0]}, "visual_prompt.color"),
        ({"shape": "box", "xyxy": [0, 0, 1, 1], "width": 0}, "visual_prompt.width"),
        ({"shape": "box", "xyxy": [0, 0, 1, 1], "width": 1.5}, "visual_prompt.width"),
        ({"shape": "box", "xyxy": [0, 0, 1, 1], "tail": [0, 0]}, "visual_prompt.tail"),
        ({"shape": "arrow", "xyxy": [0, 0, 1, 1], "tail": [0]}, "visual_prompt.tail"),
        ({"shape": "box", "xyxy": [0, 0, 1, 1], "colour": "red"}, "unknown field"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_annotations_name_the_field(annotation, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        parse_visual_prompt(annotation)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        draw_visual_prompt(grey(), annotation)
