"""`make-tiny-model --geometry real`: tiny weights with the public checkpoints' image geometry, through the
pipeline's own operators (PreprocessForModel, Generate) without Ray, and one caption job end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may reach the hub

import numpy as np
import pyarrow.parquet as pq
import pytest
from transformers import AutoConfig, AutoProcessor

from llava_batch.cli.main import main
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.tensor_codec import unpack_arrays
from llava_batch.pipeline.families.tiny_models import FAMILIES, METADATA_FILE, build_tiny_model, real_geometry
from tests.support.images import image_bytes, make_image

PROMPT = "Describe this image."
MAX_NEW_TOKENS = 3
# Seed 3: random weights whose greedy outputs differ between these images in every family, so "batch equals
# alone" compares different texts (with seed 0 the interleave model says the same thing for all three).
SEED = 3
# (width, height): landscape, portrait and 4:3, so LLaVA-NeXT picks three different anyres grids.
SIZES = [(500, 300), (300, 500), (640, 480)]
PATCHES_336 = (336 // 14) ** 2  # CLIP ViT-L/14 at 336 px: 24 x 24 = 576
PATCHES_384 = (384 // 14) ** 2  # SigLIP so400m/14 at 384 px: 27 x 27 = 729
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def anyres_image_tokens(width: int, height: int, tile: int = 336, patch: int = 14) -> int:
    """LLaVA-NeXT's image tokens for one image, computed here from the paper's rule (not by transformers):
    the pinpoint that keeps the most resolution (then wastes the least), its tiles' patch grid with the
    letterbox padding cut off, one newline token per grid row, plus the 336 px base image."""

    def score(pinpoint: list[int]) -> tuple[int, int]:
        pin_height, pin_width = pinpoint
        scale = min(pin_width / width, pin_height / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        return effective, -(pin_width * pin_height - effective)

    pin_height, pin_width = max(LLAVA_NEXT_PINPOINTS, key=score)
    side = tile // patch
    rows, columns = pin_height // tile * side, pin_width // tile * side
    if width / height > columns / rows:
        rows -= 2 * ((rows - int(round(height * columns / width, 7))) // 2)
    else:
        columns -= 2 * ((columns - int(round(width * rows / height, 7))) // 2)
    return rows * columns + rows + side * side


EXPECTED_IMAGE_TOKENS = {
    "llava": [PATCHES_336] * 3,
    "llava_next": [anyres_image_tokens(width, height) for width, height in SIZES],
    "vipllava": [PATCHES_336] * 3,
    "llava_interleave": [PATCHES_384] * 3,
}


@pytest.fixture(scope="module")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("real_geometry")
    return {
        family: build_tiny_model(family, root / family, seed=SEED, geometry="real") for family in FAMILIES
    }


@pytest.fixture(scope="module")
def operators(real_models: dict[str, Path]) -> dict[str, tuple[PreprocessForModel, Generate]]:
    """The pipeline's CPU and model operators per family, loaded once, as a replica and a CPU actor hold them."""
    generate_kwargs = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False}
    return {
        family: (
            PreprocessForModel(str(path), max_image_pixels=10**8),
            Generate(str(path), generate_kwargs=generate_kwargs, dtype="float32"),
        )
        for family, path in real_models.items()
    }


def rows_of(images: list[bytes]) -> dict[str, np.ndarray]:
    blobs = np.empty(len(images), dtype=object)
    blobs[:] = images
    return {
        "id": np.array([f"row-{index}" for index in range(len(images))], dtype=object),
        "image_bytes": blobs,
        "prompt": np.array([PROMPT] * len(images), dtype=object),
    }


IMAGES = [image_bytes(index, size) for index, size in enumerate(SIZES)]


def hf_prompt(processor: Any) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def test_llava_15_geometry_is_the_checkpoints(real_models: dict[str, Path]) -> None:
    path = real_models["llava"]
    config = AutoConfig.from_pretrained(path)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    assert config.image_seq_length == 576
    processor = AutoProcessor.from_pretrained(path, backend="pil")
    assert (processor.patch_size, processor.num_additional_image_tokens) == (14, 1)
    assert (
        processor.image_processor.crop_size["height"] == processor.image_processor.crop_size["width"] == 336
    )
    assert processor.image_processor.size["shortest_edge"] == 336
    assert json.loads((path / METADATA_FILE).read_text()) == {
        "family": "llava",
        "seed": SEED,
        "geometry": "real",
    }
    assert real_geometry("llava").checkpoint == "llava-hf/llava-1.5-7b-hf"


def test_other_families_geometry_is_the_checkpoints(real_models: dict[str, Path]) -> None:
    next_config = AutoConfig.from_pretrained(real_models["llava_next"])
    assert next_config.image_grid_pinpoints == LLAVA_NEXT_PINPOINTS
    assert next_config.text_config.model_type == "mistral"
    next_processor = AutoProcessor.from_pretrained(real_models["llava_next"], backend="pil")
    assert next_processor.image_processor.image_grid_pinpoints == LLAVA_NEXT_PINPOINTS
    assert next_processor.image_processor.crop_size["height"] == 336

    vip_config = AutoConfig.from_pretrained(real_models["vipllava"])
    layers = getattr(vip_config, "vision_feature_layers", None) or vip_config.vision_feature_layer
    assert list(layers) == [-2, -5, -8, -11, 6]
    # Every layer index it names exists: hidden_states holds num_hidden_layers + 1 entries.
    assert vip_config.vision_config.num_hidden_layers + 1 >= max(11, 6 + 1)
    assert vip_config.vision_config.image_size == 336

    interleave = AutoConfig.from_pretrained(real_models["llava_interleave"])
    assert interleave.vision_config.model_type == "siglip_vision_model"
    assert (interleave.vision_config.image_size, interleave.vision_config.patch_size) == (384, 14)
    assert (interleave.vision_feature_layer, interleave.vision_feature_select_strategy) == (-1, "full")
    assert interleave.text_config.model_type == "qwen2"
    interleave_processor = AutoProcessor.from_pretrained(real_models["llava_interleave"], backend="pil")
    assert interleave_processor.num_additional_image_tokens == 0
    assert dict(interleave_processor.image_processor.size) == {"height": 384, "width": 384}


def test_cli_builds_real_geometry_and_the_builder_refuses_bad_settings(tmp_path: Path, capsys) -> None:
    out = tmp_path / "model"
    assert (
        main(["make-tiny-model", "--family", "llava_interleave", "--geometry", "real", "--out", str(out)])
        == 0
    )
    assert "(real geometry)" in capsys.readouterr().out
    assert AutoConfig.from_pretrained(out).vision_config.image_size == 384
    assert json.loads((out / METADATA_FILE).read_text())["geometry"] == "real"
    with pytest.raises(ValueError, match="unknown geometry 'huge'; choose one of tiny, real"):
        build_tiny_model("llava", tmp_path / "x", geometry="huge")
    with pytest.raises(ValueError, match="image_size 64 conflicts with geometry 'real'"):
        build_tiny_model("llava", tmp_path / "y", geometry="real", image_size=64)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_anyres_token_rule_matches_the_published_figure() -> None:
    # The largest pinpoint, a square image: 48 x 48 patches, 48 newlines, 576 base = 2,928 ("about 2,900").
    assert anyres_image_tokens(672, 672) == 2928
    assert EXPECTED_IMAGE_TOKENS["llava_next"] == [1560, 1576, 2340]


@pytest.mark.parametrize("family", FAMILIES)
def test_num_input_tokens_equal_the_hf_processors_count(
    family: str, operators: dict, real_models: dict[str, Path]
) -> None:
    preprocess, _ = operators[family]
    out = preprocess(rows_of(IMAGES))
    assert list(out["error"]) == [None, None, None]
    # HF's own processor, loaded apart from the pipeline, on the same prompt and image.
    processor = AutoProcessor.from_pretrained(real_models[family], backend="pil")
    prompt = hf_prompt(processor)
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    hf_counts, hf_image_tokens = [], []
    for index, size in enumerate(SIZES):
        ids = processor(images=[make_image(index, size)], text=[prompt])["input_ids"][0]
        hf_counts.append(len(ids))
        hf_image_tokens.append(sum(1 for token in ids if token == image_token_id))
    assert list(out["num_input_tokens"]) == hf_counts
    assert list(out["num_image_tokens"]) == hf_image_tokens == EXPECTED_IMAGE_TOKENS[family]
    assert all(count > tokens for count, tokens in zip(hf_counts, hf_image_tokens))


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_aspect_batch_equals_each_row_alone(family: str, operators: dict) -> None:
    preprocess, generate = operators[family]
    prepared = preprocess(rows_of(IMAGES))
    # The pixels travel as uint8 and the check against the processor's float32 pixels passed: exact transport.
    assert preprocess.compact_verified and preprocess.pixel_table is not None

    # Memory per row at real geometry: what a row carries to the replica, and the float32 the model gets.
    pixel_bytes = []
    for width_height, packed in zip(SIZES, prepared["model_inputs"]):
        pixels = unpack_arrays(packed)["pixel_values"]
        assert pixels.dtype == np.uint8
        pixel_bytes.append(pixels.nbytes)
        print(
            f"{family} {width_height[0]}x{width_height[1]}: pixel_values {tuple(pixels.shape)} "
            f"{pixels.nbytes:,} B as uint8, {pixels.size * 4:,} B as float32"
        )
    side = 384 if family == "llava_interleave" else 336
    if family == "llava_next":
        # The base image and one 336 px tile per anyres grid cell: 1 + 2, 1 + 2, 1 + 4 crops.
        assert pixel_bytes == [crops * 3 * side * side for crops in (3, 3, 5)]
    else:
        assert pixel_bytes == [3 * side * side] * 3

    batched = generate(prepared)
    alone = [generate(preprocess(rows_of([image])))["generated_text"][0] for image in IMAGES]
    assert list(batched["error"]) == [None, None, None]
    assert list(batched["generated_text"]) == alone
    assert len(set(alone)) > 1  # the texts depend on the image, so equality says something


@pytest.mark.integration
@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_caption_job_with_a_real_geometry_model(
    tmp_path: Path, real_models: dict[str, Path], operators: dict
) -> None:
    (tmp_path / "in").mkdir()
    for index, size in enumerate(SIZES):
        (tmp_path / "in" / f"photo-{index}.png").write_bytes(image_bytes(index, size))
    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    argv += ["--model", str(real_models["llava"]), "--prompt", PROMPT]
    argv += ["--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "3"]
    assert main(argv) == 0
    rows = sorted(pq.read_table(tmp_path / "out").to_pylist(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == ["photo-0.png", "photo-1.png", "photo-2.png"]
    assert [row["error"] for row in rows] == [None, None, None]
    assert all(row["num_input_tokens"] > PATCHES_336 for row in rows)
    # Through Ray: the operators' token counts (HF's, as tested above) and each image's text alone.
    preprocess, generate = operators["llava"]
    prepared = [preprocess(rows_of([image])) for image in IMAGES]
    assert [row["num_input_tokens"] for row in rows] == [batch["num_input_tokens"][0] for batch in prepared]
    assert [row["generated_text"] for row in rows] == [
        generate(batch)["generated_text"][0] for batch in prepared
    ]
