"""CPU side of a model: decode images, render the chat prompt, run the family's processor, tokenize unpadded.

Reads `image_bytes` (bytes of an image or a video, or a list of image bytes for multi-image rows), `prompt`,
optional `conversation` (JSON messages, or a JSON string: a prompt already rendered, used verbatim), `fields` (for a
VipLLaVA `visual_prompt` annotation) and `error`; writes `model_inputs` (packed arrays), `num_input_tokens`,
`num_image_tokens`, `num_frames`, `frame_timestamps` (video rows; None for images), `error`; drops `image_bytes`
(unless a later model call needs them).
Pixel values are packed as uint8 where the processor allows it (llava_batch.operators.pixel_transport), else as float32.
JPEGs are decoded at a reduced scale that still leaves the processor's target size (`decode_min_size`) unless
`exact_decode` is set.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import torch

from llava_batch.operators.batch import column, require_columns, row_count
from llava_batch.operators.chat_template import (
    IMAGE_PLACEHOLDER,
    Conversation,
    count_images,
    place_images,
    render_prompt,
    user_turn,
)
from llava_batch.operators.decode import ImageDecodeError, MinimumSize, decode_image
from llava_batch.operators.model_source import resolve_model_source
from llava_batch.operators.pixel_transport import (
    RAW_PIXEL_KWARGS,
    as_uint8,
    expand_pixels,
    pads_after_normalising,
    pixel_table,
)
from llava_batch.operators.tensor_codec import pack_arrays
from llava_batch.operators.video import DEFAULT_VIDEO_FRAMES, is_video, sample_frames
from llava_batch.operators.visual_prompt import draw_visual_prompt

logger = logging.getLogger(__name__)


def load_processor(model: str, *, trust_remote_code: bool = False) -> Any:
    """The checkpoint's processor with the PIL image backend pinned, so pixels do not depend on torchvision."""
    from transformers import AutoProcessor

    model = resolve_model_source(model)
    try:
        return AutoProcessor.from_pretrained(model, backend="pil", trust_remote_code=trust_remote_code)
    except TypeError:  # older transformers without the `backend` switch only have the PIL processors
        return AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)


class PreprocessForModel:
    """Holds one processor per actor; each call turns a batch of raw rows into model-ready packed inputs."""

    input_columns = ("image_bytes", "prompt")

    def __init__(
        self,
        model: str,
        *,
        max_image_pixels: int,
        fallback_chat_template: str | None = None,
        trust_remote_code: bool = False,
        visual_prompt_field: str | None = None,
        keep_image_bytes: bool = False,
        compact_pixels: bool = True,
        exact_decode: bool = False,
        video_frames: int = DEFAULT_VIDEO_FRAMES,
    ) -> None:
        """`keep_image_bytes`: pass the encoded images on, for jobs that call the model again on the same
        images (instruct: questions first, then answers); by default they are dropped to keep blocks light.

        `compact_pixels`: send uint8 pixels for the model side to normalise (llava_batch.operators.pixel_transport) where
        this processor allows it; it switches itself off, with a warning, if the first row does not reproduce the
        processor's float32 pixels exactly.

        `exact_decode`: decode every image in full; by default a JPEG is decoded at the smallest of the
        decoder's scales that keeps the processor's target size (`decode_min_size`), pixels within a few
        levels of the full decode after the processor's resize. Rows with a visual prompt always decode in
        full (its coordinates are in pixels of the original image).

        `video_frames`: a row whose bytes are a video (llava_batch.operators.video) shows the model that many frames,
        sampled uniformly over its duration, as that many images in one turn; its `num_frames` and
        `frame_timestamps` (seconds) say which (None in image rows)."""
        self.keep_image_bytes = keep_image_bytes
        self.video_frames = video_frames
        self.processor = load_processor(model, trust_remote_code=trust_remote_code)
        self.max_image_pixels = max_image_pixels
        self.fallback_chat_template = fallback_chat_template
        if not getattr(self.processor, "chat_template", None):
            logger.warning(
                "%s has no chat template; rendering prompts with the family's fallback format", model
            )
        self.visual_prompt_field = visual_prompt_field
        self.image_token = _image_token(self.processor)
        self.image_token_id = int(self.processor.tokenizer.convert_tokens_to_ids(self.image_token))
        image_processor = getattr(self.processor, "image_processor", None)
        self.pixel_table = pixel_table(image_processor) if compact_pixels and image_processor else None
        self.pads_after_normalising = pads_after_normalising(image_processor)
        self.compact_verified = False
        self.decode_min_size = (
            None if exact_decode or image_processor is None else decode_min_size(image_processor)
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns(batch, self.input_columns, stage="preprocess")
        size = row_count(batch)
        errors = column(batch, "error", size)
        conversations = column(batch, "conversation", size)
        fields = column(batch, "fields", size)
        packed = np.full(size, None, dtype=object)
        num_input_tokens = np.full(size, None, dtype=object)
        num_image_tokens = np.full(size, None, dtype=object)
        frame_timestamps = np.full(size, None, dtype=object)
        for index in range(size):
            if errors[index] is not None:
                continue
            try:
                row_fields = json.loads(fields[index]) if fields[index] else {}
                # llava_batch.operators.prompts writes a raw prompt (--raw-prompt-column) as a JSON string, messages as a list.
                decoded = json.loads(conversations[index]) if conversations[index] else None
                arrays = self.preprocess_row(
                    batch["image_bytes"][index],
                    str(batch["prompt"][index]),
                    conversation=decoded if isinstance(decoded, list) else None,
                    raw_prompt=decoded if isinstance(decoded, str) else None,
                    visual_prompt=row_fields.get(self.visual_prompt_field)
                    if self.visual_prompt_field
                    else None,
                )
                frame_timestamps[index] = arrays.pop("frame_timestamps", None)
            except ImageDecodeError as error:
                errors[index] = f"decode: {error}"
                continue
            except Exception as error:  # a row the processor rejects must not take the batch down
                logger.warning("preprocess failed for row %d: %s", index, error)
                errors[index] = (
                    f"preprocess: {error}"
                    if isinstance(error, ValueError)
                    else (f"preprocess: {type(error).__name__}: {error}")
                )
                continue
            packed[index] = pack_arrays(arrays)
            num_input_tokens[index] = int(arrays["input_ids"].shape[-1])
            num_image_tokens[index] = int((arrays["input_ids"] == self.image_token_id).sum())
        out = {
            name: values for name, values in batch.items() if self.keep_image_bytes or name != "image_bytes"
        }
        out.update(
            model_inputs=packed,
            num_input_tokens=num_input_tokens,
            num_image_tokens=num_image_tokens,
            # In every batch, videos or not: blocks of one dataset must have the same columns to be merged.
            num_frames=np.array(
                [None if value is None else len(value) for value in frame_timestamps], dtype=object
            ),
            frame_timestamps=frame_timestamps,
            error=errors,
        )
        return out

    def preprocess_row(
        self,
        image_bytes: Any,
        prompt: str,
        *,
        conversation: Conversation | None = None,
        raw_prompt: str | None = None,
        visual_prompt: Any = None,
    ) -> dict[str, np.ndarray]:
        """One row: images decoded in order, the conversation rendered, processor outputs (unpadded ids).

        A `raw_prompt` is the model's whole prompt, already rendered: no chat template; it is tokenized by the same
        processor call as a rendered conversation (`processor(text=..., images=...)`, as the model docs do)."""
        payloads = list(image_bytes) if isinstance(image_bytes, (list, tuple, np.ndarray)) else [image_bytes]
        timestamps = None
        # A visual prompt's coordinates and line width are in pixels of the original image: decode it in full.
        min_size = self.decode_min_size if visual_prompt is None else None
        if len(payloads) == 1 and isinstance(payloads[0], bytes) and is_video(payloads[0]):
            sampled = sample_frames(
                payloads[0], num_frames=self.video_frames, max_image_pixels=self.max_image_pixels
            )
            images, timestamps = sampled.frames, sampled.timestamps
        else:
            images = [
                decode_image(payload, max_image_pixels=self.max_image_pixels, min_size=min_size)
                for payload in payloads
            ]
        if visual_prompt is not None:
            annotations = visual_prompt if isinstance(visual_prompt, list) else [visual_prompt]
            for annotation in annotations:  # VipLLaVA marks regions of the (first) image
                images[0] = draw_visual_prompt(images[0], annotation)
        if raw_prompt is not None:
            text = raw_prompt
            wanted = raw_prompt.count(self.image_token)
            if wanted != len(images):
                raise ValueError(
                    f"the raw prompt has {wanted} {self.image_token} placeholder(s) but the row has "
                    f"{len(images)} image(s)"
                )
        else:
            conversation = (
                user_turn(prompt, len(images))
                if conversation is None
                else place_images(conversation, len(images))
            )
            wanted = count_images(conversation)
            if wanted != len(images):
                raise ValueError(
                    f"the prompt has {wanted} image placeholder(s) but the row has {len(images)} image(s)"
                )
            text = render_prompt(self.processor, conversation, self.fallback_chat_template)
        arrays = None
        if self.pixel_table is not None and not (self.pads_after_normalising and len(images) > 1):
            arrays = self._compact_arrays(text, images)
        if arrays is None:
            encoded = self.processor(text=[text], images=images, return_tensors="np")
            arrays = {name: np.asarray(value) for name, value in encoded.items() if name != "attention_mask"}
        arrays["input_ids"] = arrays["input_ids"][0].astype(np.int64)
        if timestamps is not None:
            arrays["frame_timestamps"] = timestamps
        return arrays

    def _compact_arrays(self, text: str, images: list[Any]) -> dict[str, np.ndarray] | None:
        """Processor outputs with uint8 pixel values, or None where they would not be exact (use float32)."""
        encoded = self.processor(text=[text], images=images, return_tensors="np", **RAW_PIXEL_KWARGS)
        arrays = {name: np.asarray(value) for name, value in encoded.items() if name != "attention_mask"}
        pixels = as_uint8(arrays["pixel_values"])
        if pixels is None:
            logger.warning(
                "un-normalised pixel values are not 0-255 integers; sending float32 pixels instead"
            )
            self.pixel_table = None
            return None
        if not self.compact_verified:
            # Once per actor: the model side's table lookup must give the processor's own float32 pixels.
            full = self.processor(text=[text], images=images, return_tensors="np")["pixel_values"]
            expanded = expand_pixels(torch.from_numpy(pixels), torch.from_numpy(self.pixel_table)).numpy()
            difference = np.abs(expanded - full).max() if expanded.shape == full.shape else np.inf
            if difference != 0:
                logger.warning(
                    "uint8 pixels differ from the processor's by up to %g; sending float32 pixels instead",
                    difference,
                )
                self.pixel_table = None
                return None
            self.compact_verified = True
        arrays["pixel_values"] = pixels
        return arrays


def decode_min_size(image_processor: Any) -> MinimumSize | None:
    """The least (width, height) an image of a given displayed size must keep for `image_processor` to give
    the same pixel grid as from the full image; None where the processor is not one this knows (decode in full).

    CLIP-style (LLaVA, VipLLaVA): the shortest edge reaches the resize target and the centre crop. SigLIP-style
    (LLaVA-Interleave): the fixed height and width. LLaVA-NeXT anyres: besides the base image, the largest size
    the image takes in any of the `image_grid_pinpoints`, so the grid the processor picks does not change."""
    size = getattr(image_processor, "size", None)
    if not getattr(image_processor, "do_resize", False) or size is None:
        return None
    shortest_edge, height, width = (_size_field(size, key) for key in ("shortest_edge", "height", "width"))
    if shortest_edge:
        base = (shortest_edge, shortest_edge)
    elif height and width:
        base = (width, height)
    else:
        return None  # longest_edge, min/max pixels...: sizes this does not model
    if any(
        _size_field(size, key)
        for key in ("longest_edge", "max_height", "max_width", "min_pixels", "max_pixels")
    ):
        return None
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop is not None:
        base = (max(base[0], _size_field(crop, "width") or 0), max(base[1], _size_field(crop, "height") or 0))
    pinpoints = [tuple(point) for point in getattr(image_processor, "image_grid_pinpoints", None) or []]

    def min_size(image_width: int, image_height: int) -> tuple[int, int]:
        wanted_width, wanted_height = base
        for pin_height, pin_width in pinpoints:  # (height, width), as select_best_resolution reads them
            scale = min(pin_width / image_width, pin_height / image_height)
            # The tolerance keeps float noise (64 / 4032 * 4032 = 64.00000000000001) from asking for a pixel more.
            wanted_width = max(wanted_width, math.ceil(image_width * scale - 1e-6))
            wanted_height = max(wanted_height, math.ceil(image_height * scale - 1e-6))
        return wanted_width, wanted_height

    return min_size


def _size_field(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _image_token(processor: Any) -> str:
    tokenizer = processor.tokenizer
    return (
        getattr(processor, "image_token", None)
        or getattr(tokenizer, "image_token", None)
        or IMAGE_PLACEHOLDER
    )
