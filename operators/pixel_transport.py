"""Compact pixel transport: pixel values travel from the CPU actors to the model replicas as uint8, not float32.

The CPU side runs the processor with `do_rescale=False, do_normalize=False`, so pixels stay the 0-255 integers the
PIL backend produced by resizing, cropping and (LLaVA-NeXT anyres) zero-padding the uint8 image. The model side
turns them into the processor's float32 values through a per-channel table of 256 entries, each computed exactly as
the processor computes it (`float32(float64(v) * rescale_factor)`, then `(x - mean) / std` in float32), so the
result equals the processor's own output bit for bit, at a quarter of the bytes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

# The processor keyword arguments that leave pixels as resized 0-255 integers.
RAW_PIXEL_KWARGS: dict[str, bool] = {"do_rescale": False, "do_normalize": False}


def pixel_table(image_processor: Any) -> np.ndarray | None:
    """(channels, 256) float32: the processor's value for each uint8 level of each channel, or None when this
    image processor cannot be reproduced that way (then pixels travel as float32).

    Only the PIL (numpy) backends qualify: the torchvision backend resizes in floating point, so its
    un-normalised pixels are not integers, and it may fuse rescale and normalise into one step.
    """
    backend = getattr(image_processor, "backend", None)
    if backend not in (None, "pil") or type(image_processor).__name__.endswith("Fast"):
        return None
    if not all(hasattr(image_processor, name) for name in ("do_rescale", "do_normalize")):
        return None
    levels = np.arange(256, dtype=np.float64)
    if image_processor.do_rescale:
        # transformers.image_transforms.rescale: upcast to float64, multiply, downcast to float32.
        values = (levels * image_processor.rescale_factor).astype(np.float32)
    else:
        values = levels.astype(np.float32)
    channels = 3
    if not image_processor.do_normalize:
        return np.tile(values, (channels, 1))
    mean, std = image_processor.image_mean, image_processor.image_std
    mean = np.asarray(mean if isinstance(mean, (list, tuple)) else [mean] * channels, dtype=np.float32)
    std = np.asarray(std if isinstance(std, (list, tuple)) else [std] * channels, dtype=np.float32)
    if mean.shape != (channels,) or std.shape != (channels,):
        return None
    # transformers.image_transforms.normalize: (x - mean) / std with mean and std in the image's float32.
    return ((values[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)


def pads_after_normalising(image_processor: Any) -> bool:
    """LLaVA-NeXT pads a row's images to a common number of anyres patches with zeros after normalising; with
    raw pixels those zeros would come out as -mean/std, so rows with several images keep float32 pixels."""
    return bool(getattr(image_processor, "do_pad", False)) and hasattr(image_processor, "_pad_for_batching")


def as_uint8(pixels: np.ndarray) -> np.ndarray | None:
    """The raw pixels as uint8, or None when they are not whole numbers in 0..255 (then they cannot be compact)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.size and (
        pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels))
    ):
        return None
    return pixels.astype(np.uint8)


def expand_pixels(pixels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., channels, H, W) -> the processor's float32 values, by table lookup on pixels' device."""
    channels = pixels.shape[-3]
    offsets = torch.arange(channels, device=pixels.device, dtype=torch.int64).view(channels, 1, 1) * 256
    return table.reshape(-1)[pixels.to(torch.int64) + offsets]
