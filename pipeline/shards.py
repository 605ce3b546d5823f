"""Split an input into shards: the unit that is read together and committed as one output file.

A shard's id is a hash of what it holds, so re-planning the same input gives the same ids and a re-run
can skip the shards whose output file already exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pipeline.storage import IMAGE_EXTENSIONS, StorageOptions, list_files


@dataclass(frozen=True)
class Shard:
    """`members` are paths relative to `root`; each becomes one output row per prompt."""

    shard_id: str
    root: str
    members: tuple[str, ...]

    def to_item(self) -> dict[str, str]:
        """The row Ray Data carries into the read stage (JSON keeps the block schema flat and small)."""
        return {"shard_id": self.shard_id, "root": self.root, "members": json.dumps(self.members)}


def shard_id_for(members: tuple[str, ...]) -> str:
    digest = hashlib.sha1("\n".join(members).encode()).hexdigest()
    return digest[:16]


def plan_image_shards(input_uri: str, options: StorageOptions, files_per_shard: int) -> list[Shard]:
    """Image files under a prefix, sorted, in chunks of `files_per_shard` (the last one may be smaller)."""
    paths = list_files(input_uri, options, IMAGE_EXTENSIONS)
    chunks = [
        tuple(paths[start : start + files_per_shard]) for start in range(0, len(paths), files_per_shard)
    ]
    return [Shard(shard_id_for(chunk), input_uri, chunk) for chunk in chunks]
