"""Split an input into shards: the unit that is read together and committed as one output file.

A shard's id is a hash of what it holds (and of any --limit/--sample selection), so re-planning the same input
gives the same ids and a re-run skips the shards whose output file already exists. --limit is applied while
planning (its shards are cut there); --sample only when the shard is read (readers.ReadSpec.selected), so its
ids are derived after planning (`with_sample_ids`): a later full run must not take a sampled shard as done.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, replace
from itertools import groupby

from llava_batch.pipeline.io.storage import IMAGE_EXTENSIONS, StorageOptions, list_files

INPUT_KINDS = ("images", "webdataset", "parquet")


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


def plan_image_shards(
    input_uri: str,
    options: StorageOptions,
    files_per_shard: int,
    *,
    limit: int | None = None,
    whole_folders: bool = False,
) -> list[Shard]:
    """Image files under a prefix: per folder, sorted runs of `files_per_shard` files.

    Chunking inside each folder keeps existing shards unchanged when a new folder (say, tonight's date)
    appears, so an incremental re-run processes only the new shards. With `whole_folders` (--group-by folder:
    a folder is one row) a folder is never split: consecutive folders are packed into shards of up to
    `files_per_shard` files, and a larger folder is a shard of its own.
    """
    paths = list_files(input_uri, options, IMAGE_EXTENSIONS)
    selection = ""
    if limit is not None:
        paths, selection = paths[:limit], f"limit={limit}"
    if whole_folders:
        return _pack_folders(input_uri, paths, files_per_shard, selection)
    shards = []
    for _, group in groupby(paths, key=posixpath.dirname):
        files = list(group)
        for start in range(0, len(files), files_per_shard):
            chunk = tuple(files[start : start + files_per_shard])
            shards.append(Shard(shard_id_for(chunk, selection), input_uri, chunk))
    return shards


def _pack_folders(input_uri: str, paths: list[str], files_per_shard: int, selection: str) -> list[Shard]:
    shards: list[Shard] = []
    chunk: list[str] = []
    for _, group in groupby(paths, key=posixpath.dirname):
        files = list(group)
        if chunk and len(chunk) + len(files) > files_per_shard:
            shards.append(Shard(shard_id_for(tuple(chunk), selection), input_uri, tuple(chunk)))
            chunk = []
        chunk.extend(files)
    if chunk:
        shards.append(Shard(shard_id_for(tuple(chunk), selection), input_uri, tuple(chunk)))
    return shards
