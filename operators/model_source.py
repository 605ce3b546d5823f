"""Model names as users write them: a hub id, a local `save_pretrained` folder, or `builtin:<family>` for one of the
small trained checkpoints shipped inside the package (llava_batch/models/, see training/README.md).

Resolved wherever a model is loaded (driver, CPU actors, replicas), so each node uses its own installed copy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("llava", "llava_next", "vipllava", "llava_interleave")


def builtin_models_dir() -> Path:
    """The installed package's `models/` folder (package data), found without importing the package."""
    spec = importlib.util.find_spec("llava_batch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llava_batch package is not installed; `pip install llava-batch`")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def builtin_model_path(family: str) -> Path:
    if family not in BUILTIN_MODELS:
        raise ValueError(
            f"{BUILTIN_PREFIX}{family} is not a built-in model; choose one of "
            + ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_MODELS)
        )
    path = builtin_models_dir() / family
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"built-in {family} model not found at {path}; it ships inside the package (reinstall llava-batch, "
            f"or retrain it: `python -m llava_batch.training.train_tiny --family {family} --out {path}`)"
        )
    return path


def resolve_model_source(model: str) -> str:
    """What `from_pretrained` gets: `builtin:<family>` becomes the shipped folder, anything else stays as given."""
    if model.startswith(BUILTIN_PREFIX):
        return str(builtin_model_path(model[len(BUILTIN_PREFIX) :]))
    return model
