import io

import numpy as np
import pytest
from PIL import Image

from llava_batch.operators.decode import TRANSPARENCY_BACKGROUND, ImageDecodeError, decode_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_rgb_png_round_trips_pixels():
    array = np.random.default_rng(0).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    decoded = decode_image(encode(Image.fromarray(array), "PNG"), max_image_pixels=10_000)
    assert decoded.mode == "RGB" and decoded.size == (20, 12)
    assert np.array_equal(np.asarray(decoded), array)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif), max_image_pixels=10_000)
    assert decoded.size == (10, 40)


def test_transparency_is_flattened_on_the_stated_background():
    image = Image.new("RGBA", (4, 4), (0, 0, 255, 0))  # fully transparent blue
    decoded = decode_image(encode(image, "PNG"), max_image_pixels=100)
    assert decoded.getpixel((0, 0)) == TRANSPARENCY_BACKGROUND


def test_sixteen_bit_png_is_scaled_not_clipped():
    array = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(array), "PNG"), max_image_pixels=100)
    values = np.asarray(decoded)[:, :, 0]
    assert values[0, 0] == 0 and values[0, 1] == 255 and 120 < values[1, 0] < 135


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(data, max_image_pixels=100)
    red, green, _ = decoded.getpixel((0, 0))
    assert red > 200 and green < 50


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"<html>not an image</html>", "^not an image: starts with '<html>not an ima'$"),
        (
            encode(Image.new("RGB", (30, 30)), "PNG")[:60],
            r"^truncated PNG \(60 bytes; image file is truncated\)$",
        ),
        (b"%PDF-1.7\n" + bytes(40), "^not an image: a PDF document$"),
        (
            b"\x00\x00\x00\x20ftypisom" + bytes(40),
            "^not an image: an MP4/QuickTime video \\(brand 'isom'\\)$",
        ),
        (bytes(range(1, 40)), "^not an image: unknown format, starts with bytes 01 02 03 04 05 06 07 08$"),
    ],
)
def test_unusable_bytes_raise_with_a_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason) as raised:
        decode_image(data, max_image_pixels=10_000)
    assert " at 0x" not in str(raised.value)  # Pillow names its in-memory buffer; the message must not


def test_oversize_image_refused_before_decoding():
    data = encode(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(ImageDecodeError, match="300x300 = 90000 pixels, over max_image_pixels=1000"):
        decode_image(data, max_image_pixels=1000)
