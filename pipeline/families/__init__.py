"""Which LLaVA family a checkpoint belongs to, decided from its config before any data is read.

One code path serves every family; the family only picks the fallback prompt format and a few checks.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from llava_batch.operators.model_source import resolve_model_source
from llava_batch.pipeline.config import ConfigError

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
    """Load only the config (a few KB) and name the family; fails fast with the fix in the message (a path
    that is no model folder before transformers is even imported, which takes seconds)."""
    try:  # `builtin:<family>`: the checkpoint shipped in the package; ModelInfo then holds its folder
        name_or_path = resolve_model_source(name_or_path)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"model: {error}") from None
    local = Path(name_or_path).expanduser()
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not (local / "config.json").is_file():
        raise ConfigError(
            f"model: {name_or_path!r} is not a model directory (no config.json there); pass a directory made by "
            "save_pretrained (or `llava-batch make-tiny-model`) or a Hugging Face hub id"
        )
    source = str(local) if looks_local else name_or_path
    from transformers import AutoConfig

    try:
        # The local cache first: a downloaded hub model works offline and costs no network round trip.
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except OSError:
        config = None
    except ValueError as error:  # unknown model types, and custom code without trust_remote_code
        hint = (
            " Pass --trust-remote-code only if you trust its author."
            if "trust_remote_code" in str(error)
            else ""
        )
        raise ConfigError(f"model: {name_or_path!r} could not be read: {error}{hint}") from error
    if config is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        reason = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable_reason()
        if reason is None:
            try:
                config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            except OSError as error:
                reason = f"loading it failed: {error}"
        if config is None:
            raise ConfigError(
                f"model: {name_or_path!r} is not a local directory or a cached download, and it could not be "
                f"fetched from the Hugging Face Hub ({reason}). Download it where there is network "
                "(`huggingface-cli download ...`) and pass the local path."
            )
    text_type = getattr(getattr(config, "text_config", None), "model_type", "") or ""
    vision_type = getattr(getattr(config, "vision_config", None), "model_type", "") or ""
    family = family_of(config.model_type, text_type)
    return ModelInfo(name_or_path, family, config.model_type, text_type, vision_type)


def _hub_unreachable_reason(timeout_s: float = 3.0) -> str | None:
    """One quick TCP connect instead of transformers' retry loop (about 25 s with no network)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout_s).close()
    except OSError as error:
        return f"no network: {endpoint.hostname} is unreachable ({error})"
    return None


def model_provenance(model: ModelInfo) -> dict[str, str | None]:
    """Enough to say later exactly which weights made a row: the id, the hub revision, a content checksum.

    The checksum covers config.json and each weight file's name, size and header (the first 64 KiB, where
    safetensors keeps its tensor table), so it is cheap even for 70B checkpoints.
    """
    folder = _model_folder(model.name_or_path)
    revision = folder.name if folder is not None and folder.parent.name == "snapshots" else None
    digest = hashlib.sha256()
    if folder is not None:
        for path in sorted(folder.iterdir()):
            if path.name == "config.json" or path.suffix in (".safetensors", ".bin"):
                digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
                with path.open("rb") as handle:
                    digest.update(handle.read(65536))
    return {
        "name_or_path": model.name_or_path,
        "family": model.family,
        "model_type": model.model_type,
        "text_model_type": model.text_model_type,
        "revision": revision,
        "checksum": f"sha256:{digest.hexdigest()}" if folder is not None else None,
    }


def _model_folder(name_or_path: str) -> Path | None:
    local = Path(name_or_path).expanduser()
    if (local / "config.json").is_file():
        return local
    try:
        from transformers.utils import cached_file

        # Not resolve(): the snapshot entries are links into blobs/, and the snapshot folder names the revision.
        return Path(cached_file(name_or_path, "config.json", local_files_only=True)).parent
    except (OSError, ValueError):
        return None


def check_model_loadable(model: ModelInfo, *, trust_remote_code: bool = False) -> None:
    """Fail before any data is read when the replicas could not load the model: the processor must load and the
    weight files must be there with readable headers (only the headers are read, not the weights)."""
    from llava_batch.operators.preprocess import load_processor

    try:
        load_processor(model.name_or_path, trust_remote_code=trust_remote_code)
    except Exception as error:  # tokenizer/processor files missing or broken
        raise ConfigError(
            f"model: the processor of {model.name_or_path!r} does not load: {type(error).__name__}: {error}"
        ) from None
    folder = _model_folder(model.name_or_path)
    if folder is None:
        return  # weights of a hub model are fetched by the replicas
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not weights:
        raise ConfigError(f"model: no weight files (*.safetensors, *.bin) in {str(folder)!r}")
    from safetensors import safe_open

    for path in weights:
        if path.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:
            raise ConfigError(f"model: weight file {str(path)!r} is unreadable: {error}") from None
