"""The synthetic shape data: deterministic from its seed, splits disjoint, every answer true to its pixels."""

import hashlib

import numpy as np
import pytest

from llava_batch.operators.visual_prompt import draw_visual_prompt, parse_visual_prompt
from llava_batch.training.shapes import (
    COLOURS,
    FAMILIES,
    FAMILY_COLOURS,
    FAMILY_SHAPES,
    HORIZONTAL_BANDS,
    ORDINALS,
    PROMPTS,
    VIDEO_FRAME_COUNTS,
    VIDEO_PROMPTS,
    answer_words,
    sampled_times,
    samples,
)

COUNT = 120


def fingerprint(sample) -> str:
    digest = hashlib.sha256()
    for image in sample.images:
        digest.update(repr(image.size).encode() + image.tobytes())
    digest.update(f"{sample.prompt}|{sample.answer}|{sample.visual_prompt}".encode())
    return digest.hexdigest()


def filled(array: np.ndarray, point: tuple[float, float], colour: str) -> bool:
    """Whether the pixel nearest `point` is the shape's colour (within the generator's jitter, with margin)."""
    x, y = round(point[0]), round(point[1])
    return bool(np.abs(array[y, x].astype(int) - np.array(COLOURS[colour])).max() <= 40)


def inside_polygon(xs: np.ndarray, ys: np.ndarray, vertices: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule: whether each point (xs, ys) lies inside the polygon."""
    inside = np.zeros(xs.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        crosses = (y0 > ys) != (y1 > ys)
        x_cross = x0 + (ys - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
        inside ^= crosses & (xs < x_cross)
    return inside


def ideal_masks(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> dict[str, np.ndarray]:
    """Where each kind of shape with this centre and circumradius covers the pixels: the generator's geometry."""

    def ring(radii, start_degrees, step_degrees):
        angles = np.radians(start_degrees + step_degrees * np.arange(len(radii)))
        return [(cx + rad * np.cos(a), cy + rad * np.sin(a)) for rad, a in zip(radii, angles)]

    return {
        "circle": np.hypot(xs - cx, ys - cy) <= r,
        "square": (np.abs(xs - cx) <= 0.85 * r) & (np.abs(ys - cy) <= 0.85 * r),
        "triangle": inside_polygon(xs, ys, ring([r] * 3, -90, 120)),
        "star": inside_polygon(xs, ys, ring([r, 0.45 * r] * 5, -90, 36)),
    }


def classify(array: np.ndarray, item) -> str:
    """The kind of shape whose ideal outline best overlaps (IoU) the pixels of the item's colour."""
    (cx, cy), r = item.center, item.radius
    x0, y0 = max(int(cx - 1.3 * r), 0), max(int(cy - 1.3 * r), 0)
    window = array[y0 : int(cy + 1.3 * r) + 1, x0 : int(cx + 1.3 * r) + 1].astype(int)
    ys, xs = np.mgrid[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]].astype(float)
    seen = np.abs(window - np.array(COLOURS[item.colour])).max(axis=-1) <= 40
    scores = {
        name: (seen & mask).sum() / max((seen | mask).sum(), 1)
        for name, mask in ideal_masks(xs, ys, cx, cy, r).items()
    }
    return max(scores, key=scores.get)


@pytest.fixture(scope="module")
def train_sets():
    return {family: samples(family, "train", COUNT, seed=0) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_samples_and_sample_i_does_not_depend_on_count(family, train_sets):
    again = samples(family, "train", COUNT // 2, seed=0)
    assert [fingerprint(s) for s in again] == [fingerprint(s) for s in train_sets[family][: COUNT // 2]]
    other_seed = samples(family, "train", 20, seed=1)
    assert len({fingerprint(s) for s in other_seed} & {fingerprint(s) for s in train_sets[family]}) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_heldout_never_overlap_even_with_the_same_seed_number(family, train_sets):
    heldout = samples(family, "heldout", COUNT, seed=0)
    train_prints = {fingerprint(s) for s in train_sets[family]}
    assert train_prints.isdisjoint(fingerprint(s) for s in heldout)
    # Images only, too: no held-out image is a training image.
    train_images = {image.tobytes() for s in train_sets[family] for image in s.images}
    assert train_images.isdisjoint(image.tobytes() for s in heldout for image in s.images)


@pytest.mark.parametrize("family", FAMILIES)
def test_tasks_cover_their_vocabulary(family, train_sets):
    answers = {s.answer for s in train_sets[family]}
    assert answers <= set(answer_words(family))
    assert {s.prompt for s in train_sets[family]} == set(PROMPTS[family])
    words = " ".join(answers)
    assert all(shape in words for shape in FAMILY_SHAPES[family])
    if family != "llava_interleave":
        assert all(colour in words for colour in FAMILY_COLOURS[family])
    assert len(FAMILY_SHAPES[family]) >= 3 and len(FAMILY_COLOURS[family]) >= 3


@pytest.mark.parametrize("family", FAMILIES)
def test_colour_at_each_shape_centre_and_shape_outline_match_the_record(family, train_sets):
    checked_shapes = 0
    for sample in train_sets[family]:
        assert len(sample.shapes) == len(sample.images)
        for image, items in zip(sample.images, sample.shapes):
            array = np.asarray(image)
            for item in items:
                assert filled(array, item.center, item.colour), (sample.answer, item)
                # Below 6 pixels, circles and squares share most of their pixels. The video task's answers
                # name no shape (its small shapes sit at any sub-pixel phase): colour and place are checked.
                if item.radius >= 6 and sample.scene is None:
                    assert classify(array, item) == item.shape, (sample.answer, item)
                    checked_shapes += 1
    assert checked_shapes >= 5


def test_llava_answer_is_colour_shape_and_horizontal_band(train_sets):
    for sample in train_sets["llava"]:
        (item,) = sample.shapes[0]
        width, _ = sample.images[0].size
        (position,) = [
            name for name, (low, high) in HORIZONTAL_BANDS.items() if low <= item.center[0] / width <= high
        ]
        assert sample.answer == f"a {item.colour} {item.shape} {position}"
        # At most 5:4 wide, so CLIP's centre crop keeps every band; the whole shape lies inside the image.
        width, height = sample.images[0].size
        assert 3 / 4 <= width / height <= 5 / 4
        x0, y0, x1, y1 = item.xyxy
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
        assert sample.visual_prompt is None
    # Small shapes to shapes that fill most of the short side, and images from 32 to 224 pixels.
    fractions = [s.shapes[0][0].radius / min(s.images[0].size) for s in train_sets["llava"]]
    assert min(fractions) < 0.15 and max(fractions) > 0.3
    sides = [min(s.images[0].size) for s in train_sets["llava"]]
    assert min(sides) < 64 and max(sides) > 160


def test_llava_next_answer_names_the_corner_and_images_vary_in_aspect_ratio(train_sets):
    for sample in train_sets["llava_next"]:
        (item,) = sample.shapes[0]
        width, height = sample.images[0].size
        vertical = "top" if item.center[1] < height / 2 else "bottom"
        horizontal = "left" if item.center[0] < width / 2 else "right"
        assert sample.answer == f"a {item.colour} {item.shape} in the {vertical} {horizontal}"
        x0, y0, x1, y1 = item.xyxy
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
    ratios = {round(s.images[0].size[0] / s.images[0].size[1], 2) for s in train_sets["llava_next"]}
    assert len(ratios) >= 5 and min(ratios) < 0.6 and max(ratios) > 1.6


def test_vipllava_marks_exactly_the_shape_the_answer_names(train_sets):
    markers = set()
    for sample in train_sets["vipllava"]:
        items = sample.shapes[0]
        assert 2 <= len(items) <= 3
        assert len({(item.colour, item.shape) for item in items}) == len(items)  # the answer is unambiguous
        annotation = parse_visual_prompt(sample.visual_prompt)
        markers.add(annotation["shape"])
        x0, y0, x1, y1 = annotation["xyxy"]
        center = ((x0 + x1) / 2, (y0 + y1) / 2)
        marked = [item for item in items if np.hypot(*np.subtract(item.center, center)) < 1]
        assert len(marked) == 1
        assert sample.answer == f"the {marked[0].colour} {marked[0].shape}"
        # The marker is drawn around the shape, never over any shape's centre; the stored image stays clean.
        drawn = np.asarray(draw_visual_prompt(sample.images[0], sample.visual_prompt))
        clean = np.asarray(sample.images[0])
        assert (drawn != clean).any()
        for item in items:
            assert filled(drawn, item.center, item.colour)
        assert not (clean == np.array(COLOURS["red"])).all(axis=-1).any()
    assert markers == {"box", "ellipse", "arrow"}


def test_interleave_answers_count_or_name_the_shapes_of_two_images(train_sets):
    prompts = set()
    for sample in train_sets["llava_interleave"]:
        if sample.scene is not None:
            continue  # the video task: the next test
        assert len(sample.images) == 2
        prompts.add(sample.prompt)
        counts = [len(items) for items in sample.shapes]
        if sample.prompt == PROMPTS["llava_interleave"][0]:
            assert counts[0] != counts[1]
            assert sample.answer == ORDINALS[int(np.argmax(counts))]
        else:
            assert counts == [1, 1]
            assert sample.answer == f"{sample.shapes[0][0].shape}, {sample.shapes[1][0].shape}"
    assert prompts == set(PROMPTS["llava_interleave"][:2])


def test_interleave_video_rows_are_a_clips_sampled_frames_and_name_what_moves_and_where(train_sets):
    videos = [sample for sample in train_sets["llava_interleave"] if sample.scene is not None]
    assert len(videos) >= COUNT // 5
    directions, counts = set(), set()
    for sample in videos:
        assert sample.prompt in VIDEO_PROMPTS
        scene = sample.scene
        times = sampled_times(len(sample.images))
        counts.add(len(sample.images))
        # The row's images are the clip at the middle of equal spans, in time order: what the reader samples.
        for image, time in zip(sample.images, times):
            assert image.tobytes() == scene.frame(time).tobytes()
        # The answer is the mover's colour and its direction, read from where it is drawn in the first and last
        # frame; the still shape has another colour and is in the same place in every frame.
        first, last = np.asarray(sample.images[0]), np.asarray(sample.images[-1])
        (still,) = scene.still_shapes
        assert still.colour != scene.mover.colour
        assert filled(first, still.center, still.colour) and filled(last, still.center, still.colour)
        start, end = scene.mover_at(times[0]), scene.mover_at(times[-1])
        assert filled(first, start.center, scene.mover.colour) and filled(
            last, end.center, scene.mover.colour
        )
        assert not filled(last, start.center, scene.mover.colour)  # it left its first place
        dx, dy = np.subtract(end.center, start.center)
        direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert max(abs(dx), abs(dy)) >= 0.3 * min(sample.images[0].size)  # plainly visible at 32 pixels
        assert sample.answer == f"the {scene.mover.colour} shape moves {direction}"
        directions.add(direction)
    assert directions == {"left", "right", "up", "down"}
    assert counts == set(VIDEO_FRAME_COUNTS)
    assert sampled_times(4) == [0.125, 0.375, 0.625, 0.875]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="family"):
        samples("llava_onevision", "train", 1, seed=0)
    with pytest.raises(ValueError, match="split"):
        samples("llava", "test", 1, seed=0)
