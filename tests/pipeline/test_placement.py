"""A replica sharded over N GPUs: the device map covers every module and balances the layers (checked on CPU
with the real LLaVA-1.5-7B and LLaVA-NeXT-34B-like shapes on the meta device: no memory is used)."""

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

from llava_batch.operators.generation.placement import balanced_device_map, bytes_per_device, empty_model

GIB = 2**30


def llava_7b_config() -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)  # fmt: skip
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       vocab_size=32064)  # fmt: skip
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000)


def llava_next_34b_like_config() -> LlavaNextConfig:
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)  # fmt: skip
    text = LlamaConfig(hidden_size=7168, intermediate_size=20480, num_hidden_layers=60, num_attention_heads=56,
                       num_key_value_heads=8, vocab_size=64064)  # fmt: skip
    return LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=64000)


@pytest.mark.parametrize(("make_config", "devices", "memory"), [(llava_7b_config, 2, 80 * GIB),
                         (llava_7b_config, 4, 80 * GIB), (llava_next_34b_like_config, 2, 80 * GIB)])  # fmt: skip
def test_device_map_covers_every_parameter_and_is_balanced(make_config, devices, memory):
    model = empty_model(make_config())
    device_map = balanced_device_map(model, devices, memory)
    totals = bytes_per_device(model, device_map, torch.bfloat16)  # raises if a parameter is not covered
    assert set(totals) == set(range(devices)), f"every device gets layers: {totals}"
    total = sum(totals.values())
    expected = sum(p.numel() for p in model.parameters()) * 2
    assert total == expected
    # Balanced: no device holds more than 1.25x its even share (whole layers, embeddings and head are lumpy).
    assert max(totals.values()) <= 1.25 * total / devices, {k: round(v / GIB, 1) for k, v in totals.items()}


def test_a_model_too_large_for_the_devices_is_refused():
    model = empty_model(llava_next_34b_like_config())
    with pytest.raises(ValueError, match="does not fit on 1 device"):
        balanced_device_map(model, 1, 40 * GIB)
