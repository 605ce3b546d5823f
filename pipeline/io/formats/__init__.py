"""Which kind of input a URI holds (image files, WebDataset tars, Parquet tables) and its shard plan."""

from __future__ import annotations

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.shards import Shard, plan_image_shards
from llava_batch.pipeline.io.storage import IMAGE_EXTENSIONS, PATTERN_CHARACTERS, StorageOptions, list_files

TABLE_EXTENSIONS = ("parquet",)


def detect_input_format(input_uri: str, options: StorageOptions) -> str:
    """`webdataset` if the input holds tars (.tar, .tar.gz, .tgz), `parquet` if .parquet files, else `images`.

    Costs one listing of the prefix; pass --input-format to skip it on very large prefixes.
    """
    from llava_batch.pipeline.io.formats.webdataset import TAR_EXTENSIONS

    named = _format_of_name(input_uri.rstrip("}"), TAR_EXTENSIONS)  # a file, or a pattern of them
    if named is not None:
        return named
    if any(char in input_uri for char in PATTERN_CHARACTERS):
        raise ConfigError(f"input: cannot tell the format of pattern {input_uri!r}; pass --input-format")
    found = list_files(
        input_uri, options, (*TAR_EXTENSIONS, *TABLE_EXTENSIONS, *IMAGE_EXTENSIONS), log_skipped=False
    )
    formats = {_format_of_name(path, TAR_EXTENSIONS) for path in found}
    for kind in ("webdataset", "parquet"):
        if kind in formats:
            return kind
    return "images"


def _format_of_name(name: str, tar_extensions: tuple[str, ...]) -> str | None:
    lowered = name.lower()
    if lowered.endswith(tuple("." + extension for extension in tar_extensions)):
        return "webdataset"
    if lowered.endswith(tuple("." + extension for extension in TABLE_EXTENSIONS)):
        return "parquet"
    return None


def plan_shards(
    input_uri: str,
    options: StorageOptions,
    *,
    input_format: str = "auto",
    files_per_shard: int = 256,
    limit: int | None = None,
    group_by: str | None = None,
) -> tuple[str, list[Shard]]:
    """(the resolved input format, its shards in order)."""
    kind = detect_input_format(input_uri, options) if input_format == "auto" else input_format
    check_group_by(kind, group_by)
    if kind == "images":
        whole_folders = group_by is not None
        return kind, plan_image_shards(
            input_uri, options, files_per_shard, limit=limit, whole_folders=whole_folders
        )
    if kind == "webdataset":
        from llava_batch.pipeline.io.formats.webdataset import plan_webdataset_shards

        return kind, plan_webdataset_shards(input_uri, options, limit=limit)
    from llava_batch.pipeline.io.formats.parquet import plan_parquet_shards

    return kind, plan_parquet_shards(input_uri, options, limit=limit)


def check_group_by(kind: str, group_by: str | None) -> None:
    """Which grouping each input kind supports; checked once the input's format is known, before Ray starts."""
    from llava_batch.pipeline.config import GROUP_BY_FOLDER

    if group_by is None:
        return
    if kind == "images" and group_by != GROUP_BY_FOLDER:
        raise ConfigError(
            f"group_by: image folders are grouped by 'folder' (one row per folder), got {group_by!r}"
        )
    if kind == "parquet" and group_by == GROUP_BY_FOLDER:
        raise ConfigError("group_by: for Parquet input name the column whose equal values form one row")
    if kind == "webdataset":
        raise ConfigError(
            "group_by: not supported for WebDataset input (a sample is already one row: put several images "
            "in one sample, or use Parquet with a list column)"
        )
