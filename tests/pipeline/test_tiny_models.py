"""Tiny random-weight models load back through the Auto classes and generate from images of any size."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may reach the hub

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from llava_batch.pipeline.families.prompt_formats import CHAT_TEMPLATES, FAMILY_FORMATS
from llava_batch.pipeline.families.tiny_models import FAMILIES, METADATA_FILE, build_tiny_model
from tests.support.images import make_image

EXPECTED_CLASSES = {
    # family: (model, processor, image processor)
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessorPil"),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor", "LlavaNextImageProcessorPil"),
    "vipllava": ("VipLlavaForConditionalGeneration", "LlavaProcessor", "CLIPImageProcessorPil"),
    "llava_interleave": ("LlavaForConditionalGeneration", "LlavaProcessor", "SiglipImageProcessorPil"),
}
EXPECTED_PROMPTS = {
    "llava": "USER: <image>\nWhat is shown here? ASSISTANT:",
    "llava_next": "[INST] <image>\nWhat is shown here? [/INST]",
    "vipllava": "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions.###Human: <image>\nWhat is shown here?###Assistant:",
    "llava_interleave": "<|im_start|>user <image>\nWhat is shown here?<|im_end|><|im_start|>assistant",
}
# 32x32 input, 8x8 patches: 16 image tokens per image (LLaVA-NeXT adds its anyres crops on top).
TOKENS_PER_IMAGE = 16
# (width, height): different sizes and aspect ratios, so LLaVA-NeXT picks different grids for them.
IMAGE_A = make_image(0, (40, 30))
IMAGE_B = make_image(1, (90, 120))


def conversation(text: str, images: int = 1) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: build_tiny_model(family, root / family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="session")
def loaded(tiny_model_dirs: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    """(processor, model) per family, loaded back the way the pipeline loads real checkpoints."""
    result = {}
    for family, path in tiny_model_dirs.items():
        processor = AutoProcessor.from_pretrained(path, backend="pil")
        processor.tokenizer.padding_side = "left"
        result[family] = (processor, AutoModelForImageTextToText.from_pretrained(path))
    return result


def generate(processor: Any, model: Any, prompts: list[str], images: list[Any]) -> tuple[Any, torch.Tensor]:
    inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return inputs, output[:, inputs["input_ids"].shape[1] :]


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="llava_interleave"):
        build_tiny_model("llava_onevision", tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_back_with_the_right_classes(
    family: str, tiny_model_dirs: dict[str, Path], loaded: dict
) -> None:
    processor, model = loaded[family]
    model_class, processor_class, image_processor_class = EXPECTED_CLASSES[family]
    assert type(model).__name__ == model_class
    assert type(processor).__name__ == processor_class
    assert type(processor.image_processor).__name__ == image_processor_class
    assert model.dtype == torch.float32
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_index
    assert processor.tokenizer.image_token == "<image>"
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id
    assert not model.config.text_config.tie_word_embeddings
    assert json.loads((tiny_model_dirs[family] / METADATA_FILE).read_text()) == {
        "family": family,
        "seed": 0,
        "geometry": "tiny",
    }
    assert (tiny_model_dirs[family] / "model.safetensors").is_file()


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_is_the_family_format(family: str, loaded: dict) -> None:
    processor, _ = loaded[family]
    template = CHAT_TEMPLATES[FAMILY_FORMATS[family]]
    assert processor.chat_template == template
    assert processor.tokenizer.chat_template == template
    prompt = processor.apply_chat_template(conversation("What is shown here?"), add_generation_prompt=True)
    assert prompt == EXPECTED_PROMPTS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_two_image_sizes_generates(family: str, loaded: dict) -> None:
    processor, model = loaded[family]
    prompts = [
        processor.apply_chat_template(conversation("What is shown here?"), add_generation_prompt=True),
        processor.apply_chat_template(
            conversation("Describe the picture in more details."), add_generation_prompt=True
        ),
    ]
    inputs, new_tokens = generate(processor, model, prompts, [IMAGE_A, IMAGE_B])
    assert new_tokens.shape == (2, 8)
    # Left padding: every row ends with its prompt's last token, pads only at the front.
    assert (inputs["attention_mask"][:, -1] == 1).all()
    image_tokens = (inputs["input_ids"] == model.config.image_token_index).sum(dim=1).tolist()
    if family == "llava_next":
        # anyres: the 40x30 and 90x120 images take different grids, hence different token counts.
        assert image_tokens[0] != image_tokens[1]
        assert min(image_tokens) > TOKENS_PER_IMAGE
    else:
        assert image_tokens == [TOKENS_PER_IMAGE, TOKENS_PER_IMAGE]
    # Random weights must still give varied text, not one token over and over.
    assert len(set(new_tokens.flatten().tolist())) > 2


@pytest.mark.parametrize("family", FAMILIES)
def test_output_depends_on_the_image(family: str, loaded: dict) -> None:
    processor, model = loaded[family]
    prompt = processor.apply_chat_template(conversation("What is shown here?"), add_generation_prompt=True)
    _, new_tokens = generate(processor, model, [prompt, prompt], [IMAGE_A, make_image(2, (40, 30))])
    assert new_tokens[0].tolist() != new_tokens[1].tolist()


def test_interleave_one_prompt_with_two_images(loaded: dict) -> None:
    processor, model = loaded["llava_interleave"]
    prompt = processor.apply_chat_template(
        conversation("What differs?", images=2), add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user <image><image>\nWhat differs?<|im_end|><|im_start|>assistant"
    inputs, new_tokens = generate(processor, model, [prompt], [IMAGE_A, IMAGE_B])
    assert (inputs["input_ids"] == model.config.image_token_index).sum().item() == 2 * TOKENS_PER_IMAGE
    assert inputs["pixel_values"].shape[0] == 2
    assert new_tokens.shape == (1, 8)


def test_same_seed_same_files_other_seed_other_weights(
    tiny_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    for family in FAMILIES:
        again = build_tiny_model(family, tmp_path / f"{family}-again", seed=0)
        for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
            assert (again / name).read_bytes() == (tiny_model_dirs[family] / name).read_bytes(), (
                family,
                name,
            )
    other = build_tiny_model("llava", tmp_path / "llava-seed1", seed=1)
    original = tiny_model_dirs["llava"] / "model.safetensors"
    assert (other / "model.safetensors").read_bytes() != original.read_bytes()
    assert json.loads((other / METADATA_FILE).read_text())["seed"] == 1
