"""Attach the user prompt to each row (one prompt for every image in a caption job).

Reads nothing but the row count; writes `prompt`.
"""

from __future__ import annotations

import numpy as np

from operators.batch import row_count


def with_prompt(batch: dict[str, np.ndarray], *, prompt: str) -> dict[str, np.ndarray]:
    out = dict(batch)
    out["prompt"] = np.full(row_count(batch), prompt, dtype=object)
    return out
