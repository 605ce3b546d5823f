"""Which LLaVA family a checkpoint belongs to, decided from its config before any data is read.

One code path serves every family; the family only picks the fallback prompt format and a few checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError

SUPPORTED_MODEL_TYPES = ("llava", "llava_next", "vipllava")
FAMILIES = ("llava", "llava_next", "vipllava", "llava_interleave")


@dataclass(frozen=True)
class ModelInfo:
    name_or_path: str
    family: str
    model_type: str
    text_model_type: str
    vision_model_type: str


def family_of(model_type: str, text_model_type: str) -> str:
    """LLaVA-Interleave is `llava` with a Qwen2 text model; the rest map one to one."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model: model_type {model_type!r} is not a LLaVA family this tool supports; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (LLaVA-1.5, LLaVA-NeXT, VipLLaVA, LLaVA-Interleave)"
        )
    if model_type == "llava" and text_model_type.startswith("qwen2"):
        return "llava_interleave"
    return model_type


def inspect_model(name_or_path: str, *, trust_remote_code: bool = False) -> ModelInfo:
    """Load only the config (a few KB) and name the family; fails fast with the fix in the message."""
    from transformers import AutoConfig

    local = Path(name_or_path).expanduser()
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not (local / "config.json").is_file():
        raise ConfigError(
            f"model: {name_or_path!r} is not a model directory (no config.json there); pass a directory made by "
            "save_pretrained (or `llava-batch make-tiny-model`) or a Hugging Face hub id"
        )
    try:
        config = AutoConfig.from_pretrained(str(local) if looks_local else name_or_path, trust_remote_code=trust_remote_code)
    except OSError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        reason = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub could not be reached (no network?)"
        raise ConfigError(
            f"model: {name_or_path!r} is not a local directory and could not be loaded as a hub id: {reason}. "
            "Download it first (`huggingface-cli download ...`) and pass the local path, or check the network."
        ) from error
    except ValueError as error:  # transformers raises ValueError for model types it does not know
        raise ConfigError(f"model: {name_or_path!r} could not be read: {error}") from error
    text_type = getattr(getattr(config, "text_config", None), "model_type", "") or ""
    vision_type = getattr(getattr(config, "vision_config", None), "model_type", "") or ""
    family = family_of(config.model_type, text_type)
    return ModelInfo(name_or_path, family, config.model_type, text_type, vision_type)
