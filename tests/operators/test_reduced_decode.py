"""Reduced JPEG decoding: the scale picked per processor, EXIF orientation, exact mode, visual prompts, captions."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from llava_batch.operators.decode import decode_image
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel, decode_min_size, load_processor
from llava_batch.pipeline.config import RUN_ONLY_SETTINGS, JobConfig, job_fingerprint
from llava_batch.pipeline.families import FAMILIES
from llava_batch.pipeline.families.tiny_models import build_tiny_model
from llava_batch.training.shapes import samples

LIMIT = 10**8


def smooth_jpeg(width: int, height: int, *, seed: int = 0, exif: Image.Exif | None = None) -> bytes:
    """Photo-like content: gradients and a few flat blocks (reduced decoding is about photos, not noise)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127 + 100 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xs / width + rng.uniform(0.5, 2) * ys / height))
        for _ in range(3)
    ]
    pixels = np.stack(channels, axis=-1)
    pixels[height // 4 : height // 2, width // 3 : width // 2] = rng.integers(0, 256, 3)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **({"exif": exif} if exif is not None else {}))
    return buffer.getvalue()


def image_processor(family: str):
    return load_processor(f"builtin:{family}").image_processor


def test_minimum_sizes_follow_each_processor_family():
    # CLIP (shortest edge 48 / crop 48 for LLaVA and VipLLaVA) and SigLIP (fixed 32x32): whatever the photo's shape.
    assert decode_min_size(image_processor("llava"))(4032, 3024) == (48, 48)
    assert decode_min_size(image_processor("vipllava"))(3024, 4032) == (48, 48)
    assert decode_min_size(image_processor("llava_interleave"))(4032, 3024) == (32, 32)
    # LLaVA-NeXT pinpoints (h, w) 32x64, 64x32, 64x64: the 64x64 grid fits a 4:3 photo as 64x48.
    next_sizes = decode_min_size(image_processor("llava_next"))
    assert next_sizes(4032, 3024) == (64, 48)
    assert next_sizes(1000, 3000) == (32, 64)  # a 1:3 photo fits the 64x32 and 64x64 grids as 22x64
    assert next_sizes(100, 100) == (64, 64)  # the image is smaller than the grid: no reduction can follow


def test_processors_it_does_not_model_decode_in_full():
    processor = image_processor("llava")
    processor.do_resize = False
    assert decode_min_size(processor) is None
    processor.do_resize = True
    processor.size = {"longest_edge": 512}
    assert decode_min_size(processor) is None


def test_jpeg_decodes_at_the_smallest_scale_that_keeps_the_wanted_size():
    payload = smooth_jpeg(800, 600)
    assert decode_image(payload, max_image_pixels=LIMIT, min_size=lambda w, h: (100, 100)).size == (200, 150)
    assert decode_image(payload, max_image_pixels=LIMIT, min_size=lambda w, h: (300, 300)).size == (400, 300)
    assert decode_image(payload, max_image_pixels=LIMIT, min_size=lambda w, h: (500, 500)).size == (800, 600)
    assert decode_image(payload, max_image_pixels=LIMIT, min_size=lambda w, h: None).size == (800, 600)
    assert decode_image(payload, max_image_pixels=LIMIT).size == (800, 600)


def test_rotated_photo_is_sized_in_displayed_pixels():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 800x400, displayed 400x800
    payload = smooth_jpeg(800, 400, exif=exif)
    asked = []

    def min_size(width, height):
        asked.append((width, height))
        return (100, 400)  # displayed: 1/2 keeps 200x400; read in stored orientation it would allow no scale

    decoded = decode_image(payload, max_image_pixels=LIMIT, min_size=min_size)
    assert asked == [(400, 800)]
    assert decoded.size == (200, 400)


def test_png_is_shrunk_only_by_a_factor_of_four_or_more_and_the_bomb_guard_counts_the_full_size():
    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 20, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    assert decode_image(png, max_image_pixels=LIMIT, min_size=lambda w, h: (300, 200)).size == (800, 600)
    shrunk = decode_image(png, max_image_pixels=LIMIT, min_size=lambda w, h: (100, 100))
    assert shrunk.size == (134, 100)  # reduce(6): 800/6 rounded up
    assert shrunk.getpixel((50, 50)) == (10, 20, 30)
    with pytest.raises(ValueError, match="800x600 = 480000 pixels, over max_image_pixels=400000"):
        decode_image(smooth_jpeg(800, 600), max_image_pixels=400_000, min_size=lambda w, h: (10, 10))


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_exact_decode_is_bit_exact_with_full_decoding(family):
    payload = smooth_jpeg(1024, 768, seed=1)
    exact = PreprocessForModel(
        f"builtin:{family}", max_image_pixels=LIMIT, exact_decode=True, compact_pixels=False
    )
    reduced = PreprocessForModel(f"builtin:{family}", max_image_pixels=LIMIT, compact_pixels=False)
    text = exact.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}],
        add_generation_prompt=True,
    )
    full_image = decode_image(payload, max_image_pixels=LIMIT)
    plain = exact.processor(text=[text], images=[full_image], return_tensors="np")
    exact_arrays = exact.preprocess_row(payload, "What is in the image?")
    assert np.array_equal(exact_arrays["pixel_values"], plain["pixel_values"])
    assert np.array_equal(exact_arrays["input_ids"], plain["input_ids"][0])
    # Reduced decoding: the same tokens and pixel grid, pixels close to full decoding but not all equal.
    reduced_arrays = reduced.preprocess_row(payload, "What is in the image?")
    assert np.array_equal(reduced_arrays["input_ids"], exact_arrays["input_ids"])
    assert reduced_arrays["pixel_values"].shape == exact_arrays["pixel_values"].shape
    difference = np.abs(reduced_arrays["pixel_values"] - exact_arrays["pixel_values"])
    assert 0 < difference.mean() < 0.05  # normalised units: about 1.5 levels of 255 on average


def test_rows_with_a_visual_prompt_decode_in_full():
    payload = smooth_jpeg(960, 960, seed=2)
    annotation = {"shape": "box", "xyxy": [100, 120, 400, 380], "color": "red", "width": 20}
    reduced = PreprocessForModel("builtin:vipllava", max_image_pixels=LIMIT)
    exact = PreprocessForModel("builtin:vipllava", max_image_pixels=LIMIT, exact_decode=True)
    marked = reduced.preprocess_row(payload, "Which shape is marked?", visual_prompt=annotation)
    expected = exact.preprocess_row(payload, "Which shape is marked?", visual_prompt=annotation)
    assert np.array_equal(marked["pixel_values"], expected["pixel_values"])
    # Without the prompt the same image is reduced (and its pixels differ a little).
    plain = reduced.preprocess_row(payload, "Which shape is marked?")
    assert not np.array_equal(
        plain["pixel_values"], exact.preprocess_row(payload, "Which shape is marked?")["pixel_values"]
    )


def test_captions_of_large_photos_agree_with_full_decoding():
    """benchmarks/decode_agreement.py measured 0.98 agreement for builtin:llava at 480p (100 rows); these 16 all agree."""
    chosen = samples("llava", "heldout", 16, seed=0)
    image_bytes = np.empty(len(chosen), dtype=object)
    for index, sample in enumerate(chosen):
        image = sample.images[0]
        factor = math.sqrt(640 * 480 / (image.width * image.height))
        large = image.resize(
            (round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC
        )
        buffer = io.BytesIO()
        large.save(buffer, format="JPEG", quality=90)
        image_bytes[index] = buffer.getvalue()
    rows = {
        "id": np.array([f"row-{index}" for index in range(len(chosen))], dtype=object),
        "image_bytes": image_bytes,
        "prompt": np.array([sample.prompt for sample in chosen], dtype=object),
    }
    generate = Generate(
        "builtin:llava", generate_kwargs={"max_new_tokens": 16, "do_sample": False}, dtype="float32"
    )
    reduced = generate(PreprocessForModel("builtin:llava", max_image_pixels=LIMIT)(rows))["generated_text"]
    exact = generate(PreprocessForModel("builtin:llava", max_image_pixels=LIMIT, exact_decode=True)(rows))[
        "generated_text"
    ]
    assert list(reduced) == list(exact)
    assert sum(text == sample.answer for text, sample in zip(reduced, chosen)) >= 15


def test_exact_decode_is_a_setting_that_changes_the_fingerprint():
    assert "exact_decode" not in RUN_ONLY_SETTINGS
    config = JobConfig(input="/data/in", output="/data/out", model="builtin:llava")
    assert config.exact_decode is False
    exact = JobConfig(input="/data/in", output="/data/out", model="builtin:llava", exact_decode=True)
    assert job_fingerprint(exact)["exact_decode"] is True
    assert job_fingerprint(exact) != job_fingerprint(config)


def test_real_geometry_processors_decode_640x480_in_full_and_1080p_at_half(tmp_path):
    """The public checkpoints' processors (336-672 px) need more pixels than the built-in 32-64 px ones: 640x480
    must not be reduced at all (bit-exact with exact_decode), 1920x1080 only to 1/2."""
    small, hd = smooth_jpeg(640, 480, seed=3), smooth_jpeg(1920, 1080, seed=4)
    for family in FAMILIES:
        checkpoint = str(build_tiny_model(family, tmp_path / family, geometry="real"))
        reduced = PreprocessForModel(checkpoint, max_image_pixels=LIMIT, compact_pixels=False)
        exact = PreprocessForModel(
            checkpoint, max_image_pixels=LIMIT, exact_decode=True, compact_pixels=False
        )
        assert decode_image(small, max_image_pixels=LIMIT, min_size=reduced.decode_min_size).size == (
            640,
            480,
        )
        reduced_row, exact_row = (
            operator.preprocess_row(small, "Describe.") for operator in (reduced, exact)
        )
        assert np.array_equal(reduced_row["pixel_values"], exact_row["pixel_values"]), family
        assert np.array_equal(reduced_row["input_ids"], exact_row["input_ids"]), family
        assert decode_image(hd, max_image_pixels=LIMIT, min_size=reduced.decode_min_size).size == (
            960,
            540,
        ), family
