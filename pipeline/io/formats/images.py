"""Image folders: one row per image or video file (or per folder of images with --group-by folder), shards of up
to --files-per-shard files of one folder.

Writes `id` (the path relative to the input), `source`, `image_bytes`, `fields` (`{"path": ...}`), `error`.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from collections.abc import Iterator
from itertools import groupby
from typing import Any

from llava_batch.operators.video import VIDEO_EXTENSIONS
from llava_batch.pipeline.config import GROUP_BY_FOLDER, ConfigError
from llava_batch.pipeline.io.listing import has_extension
from llava_batch.pipeline.io.shards import ReadSpec, Shard, shard_id_for
from llava_batch.pipeline.io.storage import (
    IMAGE_EXTENSIONS,
    IMAGE_FOLDER_EXTENSIONS,
    StorageOptions,
    broken_link,
    filesystem_for,
    join_uri,
    list_files,
    retry_io,
)


def plan(
    input_uri: str,
    options: StorageOptions,
    *,
    files_per_shard: int,
    limit: int | None,
    group_by: str | None,
    skipped: Counter | None = None,
) -> list[Shard]:
    if group_by is not None and group_by != GROUP_BY_FOLDER:
        raise ConfigError(
            f"group_by: image folders are grouped by 'folder' (one row per folder), got {group_by!r}"
        )
    return plan_image_shards(
        input_uri, options, files_per_shard, limit=limit, whole_folders=group_by is not None, skipped=skipped
    )


def read(shard: Shard, options: StorageOptions, spec: ReadSpec) -> Iterator[dict[str, Any]]:
    return read_image_files(shard, options)


def video_files(shards: list[Shard], options: StorageOptions) -> list[str]:
    """The planned files that are videos, by extension (they need PyAV on the CPU actors)."""
    return [path for shard in shards for path in shard.members if has_extension(path, VIDEO_EXTENSIONS)]


def plan_image_shards(
    input_uri: str,
    options: StorageOptions,
    files_per_shard: int,
    *,
    limit: int | None = None,
    whole_folders: bool = False,
    skipped: Counter | None = None,
) -> list[Shard]:
    """Image files under a prefix: per folder, sorted runs of `files_per_shard` files.

    Chunking inside each folder keeps existing shards unchanged when a new folder (say, tonight's date)
    appears, so an incremental re-run processes only the new shards. With `whole_folders` (--group-by folder:
    a folder is one row) a folder is never split: consecutive folders are packed into shards of up to
    `files_per_shard` files, and a larger folder is a shard of its own.

    A video file is a row of its own (its frames are that row's images); a folder row is a list of images, so
    with `whole_folders` videos are skipped and counted like other files.
    """
    extensions = IMAGE_EXTENSIONS if whole_folders else IMAGE_FOLDER_EXTENSIONS
    paths = list_files(input_uri, options, extensions, skipped_out=skipped)
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


def read_image_files(shard: Shard, options: StorageOptions) -> Iterator[dict[str, Any]]:
    """One row per image or video file; the id is the path relative to the input root. A video's bytes travel as
    an image's do: preprocessing tells them apart by content (llava_batch.operators.video.is_video)."""
    fs, root_path = filesystem_for(shard.root, options)
    for relative in shard.members:
        data, error = read_with_retries(fs, f"{root_path}/{relative}")
        yield {
            "id": relative,
            "source": join_uri(shard.root, relative),
            "image_bytes": None if data is None else [data],
            "fields": json.dumps({"path": relative}),
            "error": error,
        }


def read_with_retries(fs: Any, path: str) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, 'read: ...'); a store that is away is waited for (storage.retry_io) first."""
    link_problem = broken_link(fs, path)
    if link_problem is not None:
        return None, f"read: {link_problem}"

    def read() -> bytes:
        with fs.open_input_stream(path) as stream:
            return stream.read()

    try:
        return retry_io(read, f"reading {path}"), None
    except FileNotFoundError:
        return None, "read: file disappeared between listing and reading"
    except OSError as error:
        return None, f"read: {type(error).__name__}: {error}"
