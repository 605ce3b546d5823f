"""Small helpers for column batches (`dict[str, np.ndarray]`), the format every operator reads and writes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class MissingColumnsError(KeyError):
    """A stage got a batch without the columns its contract needs: a wiring bug, raised at once."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0])


def require_columns(batch: dict[str, np.ndarray], columns: Iterable[str], *, stage: str) -> None:
    missing = [name for name in columns if name not in batch]
    if missing:
        raise MissingColumnsError(
            f"stage {stage!r} needs column(s) {missing} but the batch has {sorted(batch)}; "
            "check the order of the job's stages"
        )


def row_count(batch: dict[str, np.ndarray]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def column(batch: dict[str, np.ndarray], name: str, size: int) -> np.ndarray:
    """A writable object-array copy of an optional column (all None when absent)."""
    if name not in batch:
        return np.full(size, None, dtype=object)
    values = np.empty(size, dtype=object)
    values[:] = [None if is_missing(value) else value for value in batch[name]]
    return values


def is_missing(value: object) -> bool:
    # Ray turns an all-None column into a null type, which reaches numpy batches as float32 NaN.
    return value is None or (isinstance(value, (float, np.floating)) and bool(np.isnan(value)))


def object_array(values: list) -> np.ndarray:
    """A 1-D object array, filled element-wise: slice assignment would broadcast nested lists into 2-D."""
    array = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        array[index] = value
    return array
