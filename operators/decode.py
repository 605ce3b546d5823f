"""Decode image bytes into RGB PIL images: EXIF orientation applied, first frame, transparency flattened.

Used inside the preprocessing actor; a file that cannot be used raises `ImageDecodeError` with the reason.
A JPEG can be decoded at 1/2, 1/4 or 1/8 scale inside the decoder (`min_size`): about 10x less work for a
12 MP photo that the processor shrinks to a few hundred pixels anyway.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable

from PIL import Image, ImageOps

# Transparent pixels become this colour; stated in the README so captions of logos are predictable.
TRANSPARENCY_BACKGROUND = (255, 255, 255)


# EXIF orientations that swap width and height on display (transpose, 90 degrees, transverse, 270 degrees).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112
_LEAST_REDUCE_FACTOR = 4  # formats without decoder scaling: see _shrink_decoded

# (width, height) of the image as displayed -> the least (width, height) the decoded image must keep, or None
# for the full image.
MinimumSize = Callable[[int, int], tuple[int, int] | None]


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message is what lands in the row's `error`."""


def decode_image(data: bytes, *, max_image_pixels: int, min_size: MinimumSize | None = None) -> Image.Image:
    """Bytes to an RGB image, refusing oversize images before their bitmap is allocated.

    `min_size`: decode a JPEG at the smallest of the decoder's scales (1/2, 1/4, 1/8) that keeps at least the
    size it asks for, in displayed (EXIF-oriented) pixels; other formats decode in full and are then shrunk by
    an integer factor of 4 or more where that still keeps the size; None: the full image. The bomb guard always
    counts the full size."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns or raises at its global limit; ours below is per job.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_image_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over max_image_pixels={max_image_pixels}"
                )
            image.seek(0)  # animated GIF/WebP: the first frame
            scaled_by_decoder = image.format == "JPEG"
            if min_size is not None and scaled_by_decoder:
                _reduce_while_decoding(image, min_size)
            image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"decompression bomb refused: {error}") from None
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad files
        raise ImageDecodeError(describe_undecodable(data, error)) from None
    image = to_rgb(ImageOps.exif_transpose(image))
    if min_size is not None and not scaled_by_decoder:
        image = _shrink_decoded(image, min_size)
    return image


def _shrink_decoded(image: Image.Image, min_size: MinimumSize) -> Image.Image:
    """PNG, WebP, GIF...: no decoder scaling, but a box-filter `reduce` by an integer factor costs far less than
    the processor's resize of a large bitmap (12 MP PNG, CLIP 336: about 1.8 s down to 0.1 s, BENCHMARKS.md).
    Only from a factor of 4: below it the resize it saves is small, and small images keep their full pixels."""
    wanted = min_size(*image.size)
    if wanted is None:
        return image
    factor = min(image.width // max(1, wanted[0]), image.height // max(1, wanted[1]))
    if factor < _LEAST_REDUCE_FACTOR:
        return image
    return image.reduce(factor)


def _reduce_while_decoding(image: Image.Image, min_size: MinimumSize) -> None:
    """Ask the JPEG decoder for a scaled-down image no smaller than `min_size` wants (before `load`).

    `draft` works in the file's own orientation, before EXIF transposition: a rotated photo's displayed
    width is its stored height, so the wanted size is swapped back for it."""
    swapped = image.getexif().get(_ORIENTATION_TAG, 1) in _SWAPPING_ORIENTATIONS
    width, height = image.size
    wanted = min_size(height, width) if swapped else min_size(width, height)
    if wanted is None:
        return
    wanted_width, wanted_height = (wanted[1], wanted[0]) if swapped else wanted
    if wanted_width * 2 > width or wanted_height * 2 > height:
        return  # no scale of 1/2 or less keeps enough pixels
    image.draft(image.mode, (max(1, wanted_width), max(1, wanted_height)))


# Magic numbers of image formats: a failure on one of these is a damaged image, not a file of another kind.
_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# Files that crawls and folders hold beside images; named so that an error row says what the file really is.
_OTHER_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (b"OggS", "an Ogg media file"),
    (b"ID3", "an MP3 audio file"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis")
_MEMORY_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def describe_undecodable(data: bytes, error: Exception) -> str:
    """What a file Pillow could not decode is: `truncated JPEG`, `not an image: starts with '<html'`, ...

    Pillow's own message names the in-memory buffer (`<_io.BytesIO object at 0x...>`), which tells a user
    nothing: the file's first bytes do.
    """
    reason = _MEMORY_ADDRESS.sub("the data", str(error)) or type(error).__name__
    image_format = _image_format(data)
    if image_format is not None:
        if "truncated" in reason.lower():
            return f"truncated {image_format} ({len(data)} bytes; {reason})"
        return f"corrupt {image_format} ({len(data)} bytes): {type(error).__name__}: {reason}"
    return f"not an image: {_what_it_is(data)}"


def _image_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF/AVIF image (no decoder for it is installed)"
    return next((name for magic, name in _IMAGE_MAGIC if data.startswith(magic)), None)


def _what_it_is(data: bytes) -> str:
    if data[4:8] == b"ftyp":
        return f"an MP4/QuickTime video (brand {data[8:12].decode('latin-1')!r})"
    if data[:4] == b"RIFF":
        return f"a RIFF {data[8:12].decode('latin-1').strip()!r} file (e.g. AVI video or WAV audio)"
    known = next((name for magic, name in _OTHER_MAGIC if data.startswith(magic)), None)
    if known is not None:
        return known
    text = _text_head(data[:16])
    if text is not None:
        return f"starts with {text.strip()!r}"
    return f"unknown format, starts with bytes {data[:8].hex(' ')}"


def _text_head(head: bytes) -> str | None:
    """The first bytes as text when they are text (a cut multi-byte character at the end is dropped)."""
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if text.strip() and all(c.isprintable() or c.isspace() for c in text) else None
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB, compositing transparency over a fixed background instead of dropping alpha."""
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENCY_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "I;16" or image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit and float images: scale to 8 bits instead of clipping everything above 255 to white.
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.astype("uint8"), mode="L").convert("RGB")
    return image.convert("RGB")
