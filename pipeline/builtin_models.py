"""The small trained checkpoints shipped in `models/` (see training/README.md), one per family.

They make the demo's output checkable by eye and serve as the end-to-end accuracy oracle in tests.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def builtin_model_path(family: str) -> Path:
    path = MODELS_DIR / family
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"built-in {family} model not found at {path}; it ships with the repository "
            f"(retrain with `python -m training.train_tiny --family {family} --out {path}`)"
        )
    return path
