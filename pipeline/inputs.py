"""Which kind of input a URI holds (image files, WebDataset tars, Parquet tables) and its shard plan."""

from __future__ import annotations

from pipeline.config import ConfigError
from pipeline.shards import Shard, plan_image_shards
from pipeline.storage import IMAGE_EXTENSIONS, PATTERN_CHARACTERS, StorageOptions, list_files


def detect_input_format(input_uri: str, options: StorageOptions) -> str:
    """`webdataset` if the input holds .tar files, `parquet` if .parquet files, else `images`.

    Costs one listing of the prefix; pass --input-format to skip it on very large prefixes.
    """
    lowered = input_uri.lower()
    if lowered.endswith(".tar"):  # a single tar or table, or a pattern of them
        return "webdataset"
    if lowered.endswith(".parquet"):
        return "parquet"
    if any(char in input_uri for char in PATTERN_CHARACTERS):
        if lowered.endswith(".tar}"):
            return "webdataset"
        if lowered.endswith(".parquet}"):
            return "parquet"
        raise ConfigError(f"input: cannot tell the format of pattern {input_uri!r}; pass --input-format")
    found = list_files(input_uri, options, ("tar", "parquet", *IMAGE_EXTENSIONS))
    if any(path.lower().endswith(".tar") for path in found):
        return "webdataset"
    if any(path.lower().endswith(".parquet") for path in found):
        return "parquet"
    return "images"


def plan_shards(
    input_uri: str,
    options: StorageOptions,
    *,
    input_format: str = "auto",
    files_per_shard: int = 256,
    limit: int | None = None,
) -> tuple[str, list[Shard]]:
    """(the resolved input format, its shards in order)."""
    kind = detect_input_format(input_uri, options) if input_format == "auto" else input_format
    if kind == "images":
        return kind, plan_image_shards(input_uri, options, files_per_shard, limit=limit)
    if kind == "webdataset":
        from pipeline.read_webdataset import plan_webdataset_shards

        return kind, plan_webdataset_shards(input_uri, options, limit=limit)
    from pipeline.read_parquet import plan_parquet_shards

    return kind, plan_parquet_shards(input_uri, options, limit=limit)
