"""Every column that travels between stages, with its Arrow type.

Operators return numpy object arrays, and a column that is None in every row of a block would otherwise reach
Arrow as a null (or float NaN) column that cannot be merged with the same column typed in other blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from llava_batch.operators.batch import is_missing

COLUMN_TYPES: dict[str, pa.DataType] = {
    # provenance and bookkeeping
    "id": pa.string(),
    "source": pa.string(),
    "shard_id": pa.string(),
    "shard_rows": pa.int64(),
    "fields": pa.string(),
    "error": pa.string(),
    # inputs
    "image_bytes": pa.list_(pa.binary()),
    "prompt": pa.string(),
    "prompt_id": pa.string(),
    "conversation": pa.string(),
    "generation": pa.string(),
    "model_inputs": pa.binary(),
    "num_input_tokens": pa.int64(),
    "num_image_tokens": pa.int64(),
    # video rows (llava_batch.operators.video): frames shown and their start times in seconds; null for images
    "num_frames": pa.int64(),
    "frame_timestamps": pa.list_(pa.float64()),
    # results
    "generated_text": pa.string(),
    "num_output_tokens": pa.int64(),
    "finish_reason": pa.string(),
    "model": pa.string(),
    # instruct job (jobs/instruct.py): questions, conversations, and how many rows each input became
    "input_id": pa.string(),
    "input_rows": pa.int64(),
    "question": pa.string(),
    "questions": pa.string(),
    "conversation_tokens": pa.int64(),
    "image": pa.string(),
    "conversations": pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])),
    "settings": pa.string(),
    # a model replica's busy/idle seconds for one batch (JSON; llava_batch.operators.generation.replica), summed by the committer
    "_replica_stats": pa.string(),
}


def to_arrow(batch: dict[str, np.ndarray]) -> pa.Table:
    """Known columns get their declared type (missing values become typed nulls); others are inferred."""
    arrays, names = [], []
    for name, values in batch.items():
        declared = COLUMN_TYPES.get(name)
        items = [None if is_missing(value) else _plain(value) for value in values]
        arrays.append(pa.array(items, type=declared) if declared is not None else pa.array(items))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _plain(value: Any) -> Any:
    """numpy containers and scalars as Python values, which pa.array takes for any declared type."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
