"""Loading a replica's model, once per actor: its dtype, bitsandbytes quantization, layers spread over several GPUs,
and the static KV cache with a compiled decoding step that --compile asks for.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from llava_batch.operators.model_source import resolve_model_source

logger = logging.getLogger(__name__)


def resolve_dtype(name: str, device_type: str) -> torch.dtype:
    """`auto` is bfloat16 on GPUs that support it (else float16), float32 on CPU."""
    if name != "auto":
        return getattr(torch, name)
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    model: str,
    *,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    device_map: dict[str, Any] | str | None = None,
    quantization: str = "none",
) -> torch.nn.Module:
    """Load once per actor; `device_map` comes from llava_batch.operators.generation.placement when a replica spans
    several GPUs. `quantization` 8bit / 4bit loads the weights through bitsandbytes (`quantization_config`)."""
    from transformers import AutoModelForImageTextToText

    model = resolve_model_source(model)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype, device_type),
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    if quantization != "none":
        kwargs["quantization_config"] = quantization_config(quantization, kwargs["dtype"])
    if device_map == "balanced":
        device_map = _balanced_over_visible_gpus(model, kwargs["dtype"], trust_remote_code)
    if device_map is None and quantization != "none":
        # bitsandbytes quantizes while loading onto a device map; a quantized model cannot be moved afterwards.
        device_map = {"": torch.cuda.current_device()} if device_type == "cuda" else "cpu"
    if device_map is not None:
        kwargs["device_map"] = device_map
    loaded = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
    if device_map is None:
        loaded.to(device_type)
    return loaded.eval()


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes settings: LLM.int8 for 8bit; NF4 weights computing in the replica's dtype for 4bit."""
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    raise ValueError(f"quantization: {quantization!r} is not one of none, 8bit, 4bit")


def _balanced_over_visible_gpus(model: str, dtype: torch.dtype, trust_remote_code: bool) -> dict[str, Any]:
    """A replica owns the GPUs Ray made visible to it; spread the layers evenly, leaving 15% for activations."""
    from transformers import AutoConfig

    from llava_batch.operators.generation.placement import balanced_device_map, empty_model

    count = torch.cuda.device_count()
    memory = int(torch.cuda.get_device_properties(0).total_memory * 0.85)
    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    device_map = balanced_device_map(empty_model(config), count, memory, dtype)
    logger.info("replica spread over %d GPUs: %s", count, device_map)
    return device_map


def use_static_cache_and_compile(model: torch.nn.Module) -> None:
    """Static KV cache, so that `generate` compiles the decoding step with torch.compile (transformers compiles
    `forward` itself when the cache is static and a `compile_config` is set: `GenerationMixin.
    _valid_auto_compile_criteria`). On CUDA the mode is "reduce-overhead" (CUDA graphs); elsewhere compilation is
    forced on with the default mode, which works but compiles slowly and gains little. Each new batch shape (rows,
    prompt length + max_new_tokens) allocates a new cache and compiles again."""
    from transformers import CompileConfig

    on_cuda = model.device.type == "cuda"
    compile_config = CompileConfig(mode="reduce-overhead" if on_cuda else "default")
    if not on_cuda:
        compile_config._compile_all_devices = True  # transformers' switch for compiling off-GPU
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = compile_config
    logger.info("static KV cache and torch.compile (%s) on %s", compile_config.mode, model.device)
