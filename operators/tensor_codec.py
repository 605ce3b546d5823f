"""Pack a row's model inputs (input_ids, pixel_values, image_sizes...) into one bytes value and back.

Ray Data moves the bytes between CPU and GPU actors; `.npz` keeps dtype and shape of ragged tensors exactly.
"""

from __future__ import annotations

import io

import numpy as np


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
