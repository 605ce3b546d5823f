"""Read stage: expand shard descriptors into one row per input sample, with raw image bytes and provenance.

Writes `id`, `source`, `shard_id`, `shard_rows`, `image_bytes` (a list of encoded images), `fields` (JSON of
sidecar or table fields, for prompt templates), `error`, and the `--keep-columns`. A sample that cannot be
read becomes an error row (after the filesystem's own retries), never a missing row.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from llava_batch.operators.batch import object_array
from llava_batch.pipeline.io.shards import ReadSpec, Shard
from llava_batch.pipeline.io.storage import StorageOptions, join_uri

logger = logging.getLogger(__name__)

ROW_COLUMNS = ("id", "source", "image_bytes", "fields", "error")


def read_shards(
    batch: dict[str, np.ndarray], *, options: StorageOptions, spec: ReadSpec
) -> dict[str, np.ndarray]:
    """Shard rows in, sample rows out; `shard_rows` tells the committer how many rows the shard has."""
    rows: list[dict[str, Any]] = []
    for index in range(len(batch["shard_id"])):
        shard = Shard.from_item({name: batch[name][index] for name in batch})
        samples = _read_one_shard(shard, options, spec)
        if spec.group_by is not None:
            samples = group_rows(shard, samples, spec)
        shard_rows = [row for row in samples if spec.selected(row["id"])]
        if shard.row_limit is not None:
            shard_rows = shard_rows[: shard.row_limit]
        for row in shard_rows:
            row["shard_id"] = shard.shard_id
            row["shard_rows"] = len(shard_rows)
        # A shard with nothing selected still has to be committed (as an empty file), or every re-run would
        # redo it: one marker row with shard_rows=0 tells the committer, and every operator skips it.
        rows.extend(shard_rows or [empty_shard_marker(shard)])
    names = ("shard_id", "shard_rows", *ROW_COLUMNS, *spec.keep_columns)
    return {name: object_array([row.get(name) for row in rows]) for name in names}


EMPTY_SHARD_ERROR = "empty shard (marker row, not written)"


def empty_shard_marker(shard: Shard) -> dict[str, Any]:
    return {
        "id": f"{shard.shard_id}#empty",
        "shard_id": shard.shard_id,
        "shard_rows": 0,
        "error": EMPTY_SHARD_ERROR,
    }


def group_rows(shard: Shard, rows: Iterable[dict[str, Any]], spec: ReadSpec) -> Iterator[dict[str, Any]]:
    """Merge the rows of one shard that share a group key into one row (LLaVA-Interleave style).

    Image folders group by folder (images in file-name order, the order of the listing); Parquet rows by the
    value of `spec.group_by` (in file order, or by `spec.order_by`). The row id is the group key, its
    `image_bytes` the members' images in order, its fields those of the first member. A member that failed makes
    the whole group an error row naming that member. Groups never span shards: folder shards hold whole
    folders (llava_batch.pipeline.io.shards) and a Parquet shard is one file.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = _group_key(row, shard, spec)
        if key is None:
            yield {
                **row,
                "error": row["error"] or f"read: group_by column {spec.group_by!r} is null in this row",
            }
            continue
        groups.setdefault(key, []).append(row)
    for key, members in groups.items():
        if spec.order_by is not None:
            members = sorted(members, key=lambda member: _order_value(member, spec.order_by))
        failed = next((member for member in members if member["error"] is not None), None)
        images = [image for member in members for image in (member["image_bytes"] or [])]
        if shard.kind == "images":
            source = shard.root if key == "." else join_uri(shard.root, key)
        else:
            source = f"{join_uri(shard.root, shard.members[0])}#{key}"
        yield {
            **members[0],
            "id": key,
            "source": source,
            "image_bytes": None if failed else images,
            "error": None if failed is None else _member_error(failed),
        }


def _group_key(row: dict[str, Any], shard: Shard, spec: ReadSpec) -> str | None:
    if shard.kind == "images":
        return posixpath.dirname(row["id"]) or "."
    value = json.loads(row["fields"] or "{}").get(spec.group_by)
    return None if value is None else str(value)


def _order_value(row: dict[str, Any], name: str) -> tuple[bool, Any]:
    value = json.loads(row["fields"] or "{}").get(name)
    return (value is None, value if value is not None else 0)  # nulls last


def _member_error(member: dict[str, Any]) -> str:
    kind, _, reason = str(member["error"]).partition(": ")
    return f"{kind}: image {member['id']} of the group: {reason}"


def _read_one_shard(shard: Shard, options: StorageOptions, spec: ReadSpec) -> Iterator[dict[str, Any]]:
    from llava_batch.pipeline.io.formats import FORMATS

    yield from FORMATS[shard.kind].read(shard, options, spec)
