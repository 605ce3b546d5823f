"""Split an input into shards: the unit that is read together and committed as one output file.

A shard's id is a hash of what it holds (and of any --limit/--sample selection), so re-planning the same input
gives the same ids and a re-run skips the shards whose output file already exists. --limit is applied while
planning (its shards are cut there); --sample only when the shard is read (ReadSpec.selected), so its
ids are derived after planning (`with_sample_ids`): a later full run must not take a sampled shard as done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Shard:
    """`members` are paths relative to `root`: the image files of an `images` shard, or the one tar / Parquet
    file of a `webdataset` / `parquet` shard. `row_limit` cuts the shard short for `--limit`."""

    shard_id: str
    root: str
    members: tuple[str, ...]
    kind: str = "images"
    row_limit: int | None = None

    def to_item(self) -> dict[str, object]:
        """The row Ray Data carries into the read stage (JSON keeps the block schema flat and small)."""
        return {
            "shard_id": self.shard_id,
            "root": self.root,
            "members": json.dumps(self.members),
            "kind": self.kind,
            "row_limit": -1 if self.row_limit is None else self.row_limit,
        }

    @classmethod
    def from_item(cls, item: dict) -> Shard:
        limit = int(item["row_limit"])
        return cls(
            str(item["shard_id"]),
            str(item["root"]),
            tuple(json.loads(item["members"])),
            str(item["kind"]),
            None if limit < 0 else limit,
        )


@dataclass(frozen=True)
class ReadSpec:
    """How to turn a sample into a row; the defaults serve plain image folders."""

    image_column: str | None = None  # parquet: column with image bytes, {bytes, path} structs or paths/URIs
    id_column: str | None = None  # parquet: column holding a stable id (else file + row number)
    keep_columns: tuple[str, ...] = ()  # fields carried to the output as columns
    sample: float | None = None  # keep this fraction of samples, chosen by a seeded hash of the id
    seed: int = 0
    group_by: str | None = None  # 'folder' or a Parquet column: one row per group, its images in order
    order_by: str | None = None  # Parquet: order a group's images by this column

    def selected(self, sample_id: str) -> bool:
        if self.sample is None:
            return True
        digest = hashlib.sha1(f"{self.seed}|{sample_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.sample


def unique_id(wanted: str, position: int, used: Container[str]) -> str:
    """`wanted`, or `wanted#<position>` when a row of this shard already has that id (`used`: a repeated key),
    so that the shard commits with every row."""
    candidate = wanted
    while candidate in used:
        candidate = f"{wanted}#{position}"
        position += 1_000_000  # only if even that is taken: still stable from run to run
    return candidate


def shard_id_for(members: tuple[str, ...], selection: str = "") -> str:
    """Stable id of a shard; `selection` (e.g. 'limit=10') keeps partial trial runs apart from full ones."""
    text = "\n".join(members) + (f"\n#{selection}" if selection else "")
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def with_sample_ids(shards: list[Shard], sample: float | None, seed: int) -> list[Shard]:
    """The shards of a `--sample FRACTION --seed N` run, with ids of their own: such a shard holds only the
    selected rows, so under the full run's id a later full run would skip it and lose the other rows."""
    if sample is None:
        return shards
    selection = f"sample={sample!r},seed={seed}"
    return [replace(shard, shard_id=shard_id_for((shard.shard_id,), selection)) for shard in shards]
