"""Decode image bytes into RGB PIL images: EXIF orientation applied, first frame, transparency flattened.

Used inside the preprocessing actor; a file that cannot be used raises `ImageDecodeError` with the reason.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

# Transparent pixels become this colour; stated in the README so captions of logos are predictable.
TRANSPARENCY_BACKGROUND = (255, 255, 255)


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message is what lands in the row's `error`."""


def decode_image(data: bytes, *, max_image_pixels: int) -> Image.Image:
    """Bytes to an RGB image, refusing oversize images before their bitmap is allocated."""
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
            image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"decompression bomb refused: {error}") from None
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad files
        raise ImageDecodeError(f"cannot decode image: {type(error).__name__}: {error}") from None
    return to_rgb(ImageOps.exif_transpose(image))


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
