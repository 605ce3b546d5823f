"""The input formats, in one table: FORMATS maps each `--input-format` name to how its shards are planned and read.

A new format is one module in this folder with `plan(input_uri, options, *, files_per_shard, limit, group_by)`
(its shards, with a ConfigError for settings it cannot honour) and `read(shard, options, spec)` (one row dict per
sample: `id`, `source`, `image_bytes`, `fields`, `error`), plus one entry here. `--input-format auto` looks for the
formats' file extensions in that order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.formats import images, parquet, webdataset
from llava_batch.pipeline.io.shards import ReadSpec, Shard
from llava_batch.pipeline.io.storage import IMAGE_EXTENSIONS, PATTERN_CHARACTERS, StorageOptions, list_files


@dataclass(frozen=True)
class InputFormat:
    extensions: tuple[str, ...]  # files that are this format's inputs (lower case, no dot)
    plan: Callable[..., list[Shard]]
    read: Callable[[Shard, StorageOptions, ReadSpec], Iterator[dict[str, Any]]]


# Detection order: an input holding tars is WebDataset even if it also holds images (the tars' own members).
FORMATS: dict[str, InputFormat] = {
    "webdataset": InputFormat(webdataset.TAR_EXTENSIONS, webdataset.plan, webdataset.read),
    "parquet": InputFormat(("parquet",), parquet.plan, parquet.read),
    "images": InputFormat(IMAGE_EXTENSIONS, images.plan, images.read),
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
    extension (image folders: videos, text files, ...)."""
    kind = detect_input_format(input_uri, options) if input_format == "auto" else input_format
    shards = FORMATS[kind].plan(
        input_uri, options, files_per_shard=files_per_shard, limit=limit, group_by=group_by, skipped=skipped
    )
    return kind, shards
