"""The input formats, in one table: FORMATS maps each `--input-format` name to how its shards are planned and read.

A new format is one module in this folder with `plan(input_uri, options, *, files_per_shard, limit, group_by)`
(its shards, with a ConfigError for settings it cannot honour), `read(shard, options, spec)` (one row dict per
sample: `id`, `source`, `image_bytes`, `fields`, `error`) and, where names tell, `video_files(shards, options)`
(videos seen in the plan), plus one entry here. `--input-format auto` looks for the formats' file extensions in
that order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.formats import images, parquet, webdataset
from llava_batch.pipeline.io.shards import ReadSpec, Shard
from llava_batch.pipeline.io.storage import (
    IMAGE_FOLDER_EXTENSIONS,
    PATTERN_CHARACTERS,
    StorageOptions,
    list_files,
)


def _videos_known_at_decode(shards: list[Shard], options: StorageOptions) -> list[str]:
    return []  # Parquet cells carry bytes without names: a video is only known when it is decoded


@dataclass(frozen=True)
class InputFormat:
    extensions: tuple[str, ...]  # files that are this format's inputs (lower case, no dot)
    plan: Callable[..., list[Shard]]
    read: Callable[[Shard, StorageOptions, ReadSpec], Iterator[dict[str, Any]]]
    # Video files the plan shows (by name): they need PyAV, which the job checks before Ray starts.
    video_files: Callable[[list[Shard], StorageOptions], list[str]] = _videos_known_at_decode


# Detection order: an input holding tars is WebDataset even if it also holds images (the tars' own members).
FORMATS: dict[str, InputFormat] = {
    "webdataset": InputFormat(
        webdataset.TAR_EXTENSIONS, webdataset.plan, webdataset.read, webdataset.video_files
    ),
    "parquet": InputFormat(("parquet",), parquet.plan, parquet.read),
    # A folder holding only videos is an image folder too: each video is one row.
    "images": InputFormat(IMAGE_FOLDER_EXTENSIONS, images.plan, images.read, images.video_files),
}
DEFAULT_FORMAT = "images"


def detect_input_format(input_uri: str, options: StorageOptions) -> str:
    """The first format (FORMATS order) whose files the input holds, else image folders.

    Costs one listing of the prefix; pass --input-format to skip it on very large prefixes.
    """
    named = format_of_name(input_uri.rstrip("}"))  # a file, or a pattern of them
    if named is not None and named != DEFAULT_FORMAT:
        return named
    if any(char in input_uri for char in PATTERN_CHARACTERS):
        raise ConfigError(f"input: cannot tell the format of pattern {input_uri!r}; pass --input-format")
    every_extension = tuple(extension for kind in FORMATS.values() for extension in kind.extensions)
    found = {
        format_of_name(path) for path in list_files(input_uri, options, every_extension, log_skipped=False)
    }
    return next((name for name in FORMATS if name in found), DEFAULT_FORMAT)


def format_of_name(name: str) -> str | None:
    lowered = name.lower()
    for format_name, kind in FORMATS.items():
        if lowered.endswith(tuple("." + extension for extension in kind.extensions)):
            return format_name
    return None


def plan_shards(
    input_uri: str,
    options: StorageOptions,
    *,
    input_format: str = "auto",
    files_per_shard: int = 256,
    limit: int | None = None,
    group_by: str | None = None,
    skipped: Counter | None = None,
) -> tuple[str, list[Shard]]:
    """(the resolved input format, its shards in order); `skipped` gets the counts of files left out by
    extension (image folders: text files, ...)."""
    kind = detect_input_format(input_uri, options) if input_format == "auto" else input_format
    shards = FORMATS[kind].plan(
        input_uri, options, files_per_shard=files_per_shard, limit=limit, group_by=group_by, skipped=skipped
    )
    return kind, shards


def check_video_decoder(input_format: str, shards: list[Shard], options: StorageOptions) -> None:
    """Video inputs are decoded with PyAV on the CPU actors: without it every video would be an error row, so
    when the plan shows videos by name, refuse before Ray starts. (Videos found only when decoded, as in a
    Parquet column's bytes, are error rows naming the same extra.)"""
    import importlib.util

    if importlib.util.find_spec("av") is not None:
        return
    videos = FORMATS[input_format].video_files(shards, options)
    if videos:
        more = f" and {len(videos) - 1} more" if len(videos) > 1 else ""
        raise ConfigError(
            f"input: holds video files ({videos[0]}{more}), which need the av package (PyAV), not installed in "
            "this environment; install it with `pip install llava-batch[video]`"
        )
