"""Read stage: expand shard descriptors into one row per input, with the raw bytes and provenance.

Writes `id`, `source`, `shard_id`, `shard_rows`, `image_bytes`, `error`. A file that cannot be read
becomes an error row (after the filesystem's own retries), never a missing row.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np

from pipeline.storage import StorageOptions, filesystem_for, join_uri

logger = logging.getLogger(__name__)

READ_ATTEMPTS = 5


def read_image_shards(batch: dict[str, np.ndarray], *, options: StorageOptions) -> dict[str, np.ndarray]:
    """Shard rows in, one row per image file out (ids are the paths relative to the input root)."""
    columns: dict[str, list] = {
        name: [] for name in ("id", "source", "shard_id", "shard_rows", "image_bytes", "error")
    }
    for shard_id, root, members_json in zip(batch["shard_id"], batch["root"], batch["members"]):
        members = json.loads(members_json)
        fs, root_path = filesystem_for(str(root), options)
        for relative in members:
            source = join_uri(str(root), relative)
            data, error = _read_with_retries(fs, f"{root_path}/{relative}")
            columns["id"].append(relative)
            columns["source"].append(source)
            columns["shard_id"].append(str(shard_id))
            columns["shard_rows"].append(len(members))
            columns["image_bytes"].append(data)
            columns["error"].append(error)
    return {name: _object_array(values) for name, values in columns.items()}


def _read_with_retries(fs, path: str) -> tuple[bytes | None, str | None]:
    delay = 0.5
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read(), None
        except FileNotFoundError:
            return None, "read: file disappeared between listing and reading"
        except OSError as error:
            if attempt == READ_ATTEMPTS:
                return None, f"read: {type(error).__name__}: {error}"
            logger.warning("read of %s failed (attempt %d/%d): %s", path, attempt, READ_ATTEMPTS, error)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
