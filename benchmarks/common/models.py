"""The models the benchmarks run: real checkpoints' configurations written out (no download), their CPU-sized
versions, and building their processors and random-weight models offline (in memory or saved as a checkpoint)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch

# Neither imports Ray: operators/ never does, and tiny_models only imports the prompt formats.
from llava_batch.operators.generation import replica as generate_module
from llava_batch.operators.generation.replica import Generate
from llava_batch.pipeline.families.prompt_formats import FAMILY_FORMATS, chat_template
from llava_batch.pipeline.families.tiny_models import build_tokenizer

IMAGE_TOKEN = "<image>"

# ---------------------------------------------------------------------------------------------------------------
# Model configurations: the checkpoints' config.json and processor settings, written out (no download)
# ---------------------------------------------------------------------------------------------------------------

# openai/clip-vit-large-patch14-336, the vision tower of LLaVA-1.5 and LLaVA-NeXT.
_CLIP_VIT_L_336: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# lmsys/vicuna-7b-v1.5 (Llama-2-7B dimensions) with LLaVA's two added tokens, padded to 32064.
_VICUNA_7B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
}
# mistralai/Mistral-7B-Instruct-v0.2 as in llava-hf/llava-v1.6-mistral-7b-hf.
_MISTRAL_7B: dict[str, Any] = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
}
# google/siglip-so400m-patch14-384 without its head, 26 layers, as llava-interleave uses it.
_SIGLIP_SO400M_384: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}
# Qwen/Qwen1.5-0.5B-Chat, vocabulary grown to 152000 by the conversion. The checkpoint ties its embeddings;
# untied here so random weights do not repeat one token (the cost per token is the same).
_QWEN15_05B: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "vocab_size": 152000,
    "tie_word_embeddings": False,
}
# llava-hf/llava-v1.6-mistral-7b-hf: image_grid_pinpoints (height, width), identical in model and processor.
_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to build one checkpoint's architecture and processor offline."""

    # The project's family name (llava_batch.pipeline.families.tiny_models.FAMILIES), which also picks the prompt format.
    family: str
    checkpoint: str  # the Hub checkpoint whose configuration this is
    model_class: str
    processor_class: str
    image_processor_class: str  # the PIL one is used where transformers has it
    text_config: dict[str, Any]
    vision_config: dict[str, Any]
    # Top-level config fields besides text/vision: feature layer and strategy, projector, pinpoints.
    model_kwargs: dict[str, Any]
    image_processor_kwargs: dict[str, Any]
    # tokens the vision tower adds besides the patches (CLIP's CLS) and whether the model drops them
    num_additional_image_tokens: int
    vision_feature_select_strategy: str
    chatml: bool = False  # Qwen2-style tokenizer (<|im_start|>/<|im_end|>) instead of Llama-style
    initializer_range: float = 0.02


REAL_SPECS: dict[str, ModelSpec] = {
    "llava": ModelSpec(
        family="llava",
        checkpoint="llava-hf/llava-1.5-7b-hf",
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_class="CLIPImageProcessor",
        text_config=_VICUNA_7B,
        vision_config=_CLIP_VIT_L_336,
        model_kwargs={
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "projector_hidden_act": "gelu",
        },
        image_processor_kwargs={"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
    ),
    "llava_next": ModelSpec(
        family="llava_next",
        checkpoint="llava-hf/llava-v1.6-mistral-7b-hf",
        model_class="LlavaNextForConditionalGeneration",
        processor_class="LlavaNextProcessor",
        image_processor_class="LlavaNextImageProcessor",
        text_config=_MISTRAL_7B,
        vision_config=_CLIP_VIT_L_336,
        model_kwargs={
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "projector_hidden_act": "gelu",
            "image_grid_pinpoints": _NEXT_PINPOINTS,
        },
        image_processor_kwargs={
            "size": {"shortest_edge": 336},
            "crop_size": {"height": 336, "width": 336},
            "image_grid_pinpoints": _NEXT_PINPOINTS,
        },
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
    ),
    "llava_interleave": ModelSpec(
        family="llava_interleave",
        checkpoint="llava-hf/llava-interleave-qwen-0.5b-hf",
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_class="SiglipImageProcessor",
        text_config=_QWEN15_05B,
        vision_config=_SIGLIP_SO400M_384,
        # SigLIP has no CLS token: the model keeps every feature of the last layer.
        model_kwargs={
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
            "projector_hidden_act": "gelu",
        },
        image_processor_kwargs={"size": {"height": 384, "width": 384}},
        num_additional_image_tokens=0,
        vision_feature_select_strategy="full",
        chatml=True,
    ),
}


def tiny_spec(spec: ModelSpec) -> ModelSpec:
    """The same classes, model types, feature strategies and pinpoint layout, with CPU-sized dimensions:
    32 px images in 8 px patches (pinpoints scaled by 336 -> 32), 2 + 2 layers, the tokenizer's vocabulary."""
    scale = 32 / 336
    text = {
        **spec.text_config,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "vocab_size": None,  # filled with len(tokenizer)
    }
    vision = {
        **spec.vision_config,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    if "projection_dim" in vision:
        vision["projection_dim"] = 32
    model_kwargs = dict(spec.model_kwargs)
    image_kwargs = dict(spec.image_processor_kwargs)
    if "image_grid_pinpoints" in model_kwargs:
        pinpoints = [[round(h * scale), round(w * scale)] for h, w in model_kwargs["image_grid_pinpoints"]]
        model_kwargs["image_grid_pinpoints"] = image_kwargs["image_grid_pinpoints"] = pinpoints
    if "crop_size" in image_kwargs:
        image_kwargs.update(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        image_kwargs["size"] = {"height": 32, "width": 32}
    # Larger than 0.02 so greedy outputs of random weights depend on the image and prompt.
    return dataclasses.replace(
        spec,
        checkpoint=f"{spec.checkpoint} (tiny)",
        text_config=text,
        vision_config=vision,
        model_kwargs=model_kwargs,
        image_processor_kwargs=image_kwargs,
        initializer_range=0.1,
    )


def model_specs(config: str) -> dict[str, ModelSpec]:
    if config == "real":
        return dict(REAL_SPECS)
    if config == "tiny":
        return {name: tiny_spec(spec) for name, spec in REAL_SPECS.items()}
    raise ValueError(f"--config must be 'real' or 'tiny', not {config!r}")


# ---------------------------------------------------------------------------------------------------------------
# Building processor and model offline
# ---------------------------------------------------------------------------------------------------------------


def build_processor(spec: ModelSpec) -> Any:
    """The family's processor around an offline tokenizer, wired so <image> expands to the model's features."""
    import transformers

    tokenizer = build_tokenizer(chatml=spec.chatml)
    template = chat_template(FAMILY_FORMATS[spec.family])
    tokenizer.chat_template = template
    # The PIL image processor by name: with torchvision installed the plain name is the torchvision backend.
    name = spec.image_processor_class
    image_processor_class = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    processor_class = getattr(transformers, spec.processor_class)
    return processor_class(
        image_processor=image_processor_class(**spec.image_processor_kwargs),
        tokenizer=tokenizer,
        patch_size=spec.vision_config["patch_size"],
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=spec.num_additional_image_tokens,
        chat_template=template,
        image_token=IMAGE_TOKEN,
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    spec: ModelSpec, tokenizer: Any, *, device: str, dtype: torch.dtype, seed: int = 0
) -> torch.nn.Module:
    """Random weights, created directly on `device` in `dtype` (a 7B model in a few seconds, no fp32 copy)."""
    import transformers

    text = dict(spec.text_config)
    if text.get("vocab_size") is None:
        text["vocab_size"] = len(tokenizer)
    text.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=spec.initializer_range,
    )
    vision = {**spec.vision_config, "initializer_range": spec.initializer_range}
    model_class = getattr(transformers, spec.model_class)
    config = model_class.config_class(
        text_config=text,
        vision_config=vision,
        # The model finds the images' places by this id: the tokenizer's id of <image>.
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **spec.model_kwargs,
    )
    config._attn_implementation = "sdpa"  # what llava_batch.operators.generation.loading.load_model asks for
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = model_class(config)
    model.eval()
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def generate_operator_around(
    model: torch.nn.Module, checkpoint_dir: str | Path, generate_kwargs: dict[str, Any]
) -> Generate:
    """The project's Generate operator holding an in-memory model instead of loading weights from disk.

    Generate's constructor loads weights with llava_batch.operators.generation.loading.load_model (patched where the
    replica module imported it) and the tokenizer from the
    checkpoint directory; only the weights loader is swapped (saving and reloading 14 GB would take minutes),
    so everything else the constructor sets up is the operator's own.
    """
    with mock.patch.object(generate_module, "load_model", lambda *args, **kwargs: model):
        return Generate(str(checkpoint_dir), generate_kwargs=generate_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The CPU benchmarks' model: a LLaVA-1.5 small enough for CPU, large enough that the model takes the time
# ---------------------------------------------------------------------------------------------------------------

CPU_LLAVA = dataclasses.replace(
    REAL_SPECS["llava"],
    checkpoint="random LLaVA-1.5, CPU-sized",
    text_config={
        "model_type": "llama",
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "vocab_size": None,  # the tokenizer's
        "tie_word_embeddings": False,
    },
    vision_config={
        "model_type": "clip_vision_model",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 4,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 512,
        "hidden_act": "quick_gelu",
    },
    image_processor_kwargs={"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}},
    # Larger than 0.02 so greedy outputs of random weights vary with the image and prompt (no near-ties).
    initializer_range=0.05,
)


def build_checkpoint(out_dir: Path, seed: int) -> tuple[Path, int]:
    """Write the CPU-sized LLaVA-1.5 (float32 safetensors + processor) to out_dir; returns (dir, parameters)."""
    processor = build_processor(CPU_LLAVA)
    model = build_model(CPU_LLAVA, processor.tokenizer, device="cpu", dtype=torch.float32, seed=seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir, parameter_count(model)
