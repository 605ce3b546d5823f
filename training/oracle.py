"""Held-out accuracy of a trained checkpoint, measured through the pipeline's own operators.

Rows go through `PreprocessForModel` then `Generate` (float32, greedy), exactly as a caption job runs them;
`generated_text.strip()` must equal the sample's answer. VipLLaVA rows get their visual prompt drawn first.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.visual_prompt import draw_visual_prompt
from llava_batch.training.shapes import Sample

MAX_IMAGE_PIXELS = 10**6
MAX_NEW_TOKENS = 16  # the longest answer is 7 tokens plus the end-of-sequence token


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def model_images(sample: Sample) -> list[Image.Image]:
    """The images the model sees: the visual prompt (if any) drawn on every image of the row."""
    if sample.visual_prompt is None:
        return list(sample.images)
    return [draw_visual_prompt(image, sample.visual_prompt) for image in sample.images]


def image_payload(sample: Sample) -> bytes | list[bytes]:
    """The `image_bytes` value of a row: PNG bytes, or a list of them for a multi-image row."""
    payloads = [png_bytes(image) for image in model_images(sample)]
    return payloads[0] if len(payloads) == 1 else payloads


def pipeline_rows(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """A batch in the pipeline's input format: `id`, `image_bytes`, `prompt`."""
    image_bytes = np.empty(len(samples), dtype=object)
    for index, sample in enumerate(samples):  # one by one: a list value must stay one object per row
        image_bytes[index] = image_payload(sample)
    return {
        "id": np.array([f"row-{index:05d}" for index in range(len(samples))], dtype=object),
        "image_bytes": image_bytes,
        "prompt": np.array([sample.prompt for sample in samples], dtype=object),
    }


def oracle_operators(
    model_dir: str, *, padding_side: str = "left", max_new_tokens: int = MAX_NEW_TOKENS
) -> tuple[PreprocessForModel, Generate]:
    preprocess = PreprocessForModel(model_dir, max_image_pixels=MAX_IMAGE_PIXELS)
    generate = Generate(
        model_dir,
        generate_kwargs={"max_new_tokens": max_new_tokens, "do_sample": False},
        dtype="float32",
        padding_side=padding_side,
    )
    return preprocess, generate


def predict(
    preprocess: PreprocessForModel, generate: Generate, rows: dict[str, np.ndarray], batch_size: int = 16
) -> list[str | None]:
    """`generated_text` per row, in order (None where a row failed)."""
    size = len(rows["prompt"])
    texts: list[str | None] = []
    for start in range(0, size, batch_size):
        batch = {name: values[start : start + batch_size] for name, values in rows.items()}
        texts.extend(generate(preprocess(batch))["generated_text"])
    return texts


def llava_answers_after_history(caption: str) -> set[str]:
    """What builtin:llava may answer in a later turn of a conversation, where `caption` is its one-turn answer for
    the image. Trained on one-turn prompts only, after an earlier exchange it gives the caption or stops before the
    position ('a green star on the left' or 'a green star'), depending on the history: either way the colour and
    the shape are the image's."""
    return {caption, " ".join(caption.split()[:3])}


def exact_match(texts: Sequence[str | None], answers: Sequence[str]) -> float:
    hits = sum(
        text is not None and text.strip() == answer for text, answer in zip(texts, answers, strict=True)
    )
    return hits / max(len(answers), 1)


@dataclass(frozen=True)
class OracleResult:
    accuracy: float
    texts: list[str | None]
    answers: list[str]

    def mistakes(self, limit: int = 10) -> list[tuple[str | None, str]]:
        return [(text, answer) for text, answer in zip(self.texts, self.answers) if text != answer][:limit]


def evaluate(model_dir: str, samples: Sequence[Sample], *, batch_size: int = 16) -> OracleResult:
    """Exact-match accuracy of `model_dir` on `samples` through PreprocessForModel + Generate."""
    preprocess, generate = oracle_operators(str(model_dir))
    texts = predict(preprocess, generate, pipeline_rows(samples), batch_size)
    answers = [sample.answer for sample in samples]
    return OracleResult(exact_match(texts, answers), list(texts), answers)
