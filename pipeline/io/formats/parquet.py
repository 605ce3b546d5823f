"""Parquet input: plan one shard per .parquet file (a prefix or a pattern) and read its rows and images.

Writes `id` (id column, else file#row), `source`, `image_bytes` (a list), `fields` (other columns), `error`.
"""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import math
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llava_batch.pipeline.config import GROUP_BY_FOLDER, ConfigError
from llava_batch.pipeline.io.listing import plan_limited, resolve_input_files
from llava_batch.pipeline.io.shards import ReadSpec, Shard, unique_id
from llava_batch.pipeline.io.storage import StorageOptions, filesystem_for, join_uri, retry_io

logger = logging.getLogger(__name__)

# Tried in this order when no --image-column is given.
IMAGE_COLUMN_NAMES = (
    "image",
    "images",
    "img",
    "jpg",
    "png",
    "image_bytes",
    "image_path",
    "path",
    "url",
    "uri",
)
_BATCH_ROWS = 1024


def plan(
    input_uri: str,
    options: StorageOptions,
    *,
    files_per_shard: int,
    limit: int | None,
    group_by: str | None,
    skipped: Counter | None = None,
) -> list[Shard]:
    """One shard per file (`files_per_shard` does not apply: a file is read whole)."""
    if group_by == GROUP_BY_FOLDER:
        raise ConfigError("group_by: for Parquet input name the column whose equal values form one row")
    return plan_parquet_shards(input_uri, options, limit=limit)


def read(shard: Shard, options: StorageOptions, spec: ReadSpec) -> Iterator[dict[str, Any]]:
    return read_parquet_shard(shard, options, spec)


def plan_parquet_shards(input_uri: str, options: StorageOptions, *, limit: int | None = None) -> list[Shard]:
    """One shard per Parquet file; `limit` reads only footers (row counts) to choose the files."""
    root, files = resolve_input_files(input_uri, options, ("parquet",))
    fs, root_path = filesystem_for(root, options)

    def count_rows(relative: str) -> int:
        path = posixpath.join(root_path, relative)

        def count() -> int:
            with fs.open_input_file(path) as handle:
                try:
                    return pq.ParquetFile(handle).metadata.num_rows
                except pa.ArrowInvalid:
                    return 1  # not a Parquet file: reading it gives one error row

        return retry_io(count, f"reading the footer of {join_uri(root, relative)}")

    return plan_limited(root, files, "parquet", limit, count_rows)


# ---------------------------------------------------------------------------------------------------------------
# Columns: which one holds the images, which are read, which go into `fields`
# ---------------------------------------------------------------------------------------------------------------


def _is_binary(kind: pa.DataType) -> bool:
    return (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
        or pa.types.is_binary_view(kind)
    )


def _is_string(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _list_value_type(kind: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return kind.value_type
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):
        return kind.value_type
    return None


def _holds_binary(kind: pa.DataType) -> bool:
    """True for binary columns and nested types with binary inside (e.g. a second HF image column)."""
    if _is_binary(kind):
        return True
    if pa.types.is_struct(kind):
        return any(_holds_binary(kind.field(index).type) for index in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _holds_binary(kind.key_type) or _holds_binary(kind.item_type)
    value_type = _list_value_type(kind)
    return value_type is not None and _holds_binary(value_type)


def _is_image_struct(kind: pa.DataType) -> bool:
    """The `{bytes, path}` struct of Hugging Face `datasets` Image features."""
    if not pa.types.is_struct(kind):
        return False
    names = {kind.field(index).name: kind.field(index).type for index in range(kind.num_fields)}
    has_bytes = "bytes" in names and _is_binary(names["bytes"])
    has_path = "path" in names and _is_string(names["path"])
    return has_bytes or has_path


def _can_hold_images(kind: pa.DataType, *, strings: bool = True) -> bool:
    """Binary, {bytes, path} struct, string path/URI (when `strings`), or a list of one of these."""
    value_type = _list_value_type(kind)
    if value_type is not None:
        kind = value_type
    return _is_binary(kind) or _is_image_struct(kind) or (strings and _is_string(kind))


class ColumnError(ValueError):
    """A file's columns do not fit the settings; `option` names the setting. The file's rows become error rows
    (other files may fit), and when no file fits the run stops before Ray starts (check_parquet_columns)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class ColumnPlan:
    image_column: str
    id_column: str | None
    read_columns: list[str]
    field_columns: list[str]
    keep_columns: tuple[str, ...] = field(default=())


def plan_columns(schema: pa.Schema, spec: ReadSpec, file_uri: str) -> ColumnPlan:
    """Check the spec against one file's schema; a broken contract raises ColumnError naming the columns."""
    names = list(schema.names)
    there = f"its columns: {names}"
    for option, wanted in (
        ("image_column", spec.image_column),
        ("id_column", spec.id_column),
        ("group_by", spec.group_by),
        ("order_by", spec.order_by),
    ):
        if wanted is not None and wanted not in names:
            raise ColumnError(option, f"{file_uri} has no column {wanted!r} ({option}); {there}")
    missing = [name for name in spec.keep_columns if name not in names]
    if missing:
        raise ColumnError("keep_columns", f"{file_uri} has no column(s) {missing} (keep_columns); {there}")

    image_column = spec.image_column
    if image_column is None:
        image_column = next((name for name in IMAGE_COLUMN_NAMES if name in names), None)
    if image_column is None:
        image_column = next(
            (name for name in names if _can_hold_images(schema.field(name).type, strings=False)), None
        )
    if image_column is None:
        raise ColumnError(
            "image_column",
            f"{file_uri} has no image column (none given; tried {list(IMAGE_COLUMN_NAMES)}, then any binary "
            f"or {{bytes, path}} column); {there}. Pass --image-column.",
        )
    image_type = schema.field(image_column).type
    if not _can_hold_images(image_type):
        raise ColumnError(
            "image_column",
            f"column {image_column!r} of {file_uri} is {image_type}, not bytes/struct/path/list "
            "(binary image data, {bytes, path} structs, path/URI strings, or lists of these)",
        )

    needed = {image_column, *spec.keep_columns, *([spec.id_column] if spec.id_column else [])}
    read_columns = [name for name in names if name in needed or not _holds_binary(schema.field(name).type)]
    field_columns = [
        name for name in read_columns if name != image_column and not _holds_binary(schema.field(name).type)
    ]
    return ColumnPlan(image_column, spec.id_column, read_columns, field_columns, spec.keep_columns)


# ---------------------------------------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------------------------------------


def read_parquet_shard(shard: Shard, options: StorageOptions, spec: ReadSpec) -> Iterator[dict[str, Any]]:
    """One row per table row, in file order; images given by path are fetched (with retries) per row."""
    (relative,) = shard.members
    file_uri = join_uri(shard.root, relative)
    fs, root_path = filesystem_for(shard.root, options)
    path = posixpath.join(root_path, relative)
    # Without --sample the shard's row limit is final, so the rest of the file need not be read.
    stop_after = shard.row_limit if spec.sample is None else None

    def read() -> tuple[ColumnPlan | ColumnError, list[dict[str, Any]]]:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            try:
                plan = plan_columns(parquet.schema_arrow, spec, file_uri)
            except ColumnError as problem:  # this file only: its rows become error rows, the others are read
                rows = parquet.metadata.num_rows
                return problem, [{}] * (rows if stop_after is None else min(rows, stop_after))
            records: list[dict[str, Any]] = []
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=plan.read_columns):
                records.extend(batch.to_pylist())
                if stop_after is not None and len(records) >= stop_after:
                    return plan, records[:stop_after]
            return plan, records

    try:
        plan, records = retry_io(read, f"reading {file_uri}")
    except FileNotFoundError:
        yield _file_error_row(
            relative,
            file_uri,
            "read: cannot read Parquet file: file disappeared between listing and reading",
            spec,
        )
        return
    except (OSError, pa.ArrowException) as error:
        logger.warning("cannot read Parquet file %s: %s", file_uri, error)
        yield _file_error_row(
            relative, file_uri, f"read: cannot read Parquet file: {type(error).__name__}: {error}", spec
        )
        return
    if isinstance(plan, ColumnError):
        logger.warning("%d rows of %s become error rows: %s", len(records), file_uri, plan)
        for index in range(len(records)):
            yield _file_error_row(f"{relative}#{index}", f"{file_uri}#{index}", f"read: {plan}", spec)
        return

    fetcher = ImageFetcher(options, posixpath.dirname(file_uri))
    row_of_id: dict[str, int] = {}  # every id given so far -> its row
    for index, record in enumerate(records):
        row = _table_row(record, index, relative, file_uri, plan, fetcher)
        wanted = row["id"]
        if wanted in row_of_id:
            # Two rows with one id would make the commit refuse the whole shard: this one becomes an error row
            # under its own file#row id.
            row["id"] = unique_id(f"{relative}#{index}", index, row_of_id)
            row["image_bytes"] = None
            row["error"] = f"read: duplicate id {wanted!r} (also row {row_of_id[wanted]})"
        row_of_id[row["id"]] = index
        yield row


def _file_error_row(row_id: str, source: str, error: str, spec: ReadSpec) -> dict[str, Any]:
    return {
        "id": row_id,
        "source": source,
        "image_bytes": None,
        "fields": json.dumps({}),
        "error": error,
        **{name: None for name in spec.keep_columns},
    }


def _table_row(
    record: dict[str, Any], index: int, relative: str, file_uri: str, plan: ColumnPlan, fetcher: ImageFetcher
) -> dict[str, Any]:
    row_id, error = f"{relative}#{index}", None
    if plan.id_column is not None:
        value = record.get(plan.id_column)
        text = _id_text(value)
        if text:
            row_id = text
        else:
            error = f"read: id column {plan.id_column!r} is {'null' if value is None else 'empty'}"
    images, image_uri, image_error = fetcher.load(record.get(plan.image_column), plan.image_column)
    error = error or image_error
    return {
        "id": row_id,
        "source": image_uri or f"{file_uri}#{index}",
        "image_bytes": None if error else images,
        "fields": json.dumps({name: json_safe(record.get(name)) for name in plan.field_columns}),
        "error": error,
        **{name: record.get(name) for name in plan.keep_columns},
    }


def _id_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class ImageFetcher:
    """Turns one image cell into a list of bytes, fetching paths/URIs; keeps one S3 client per bucket."""

    def __init__(self, options: StorageOptions, folder_uri: str) -> None:
        self.options = options
        self.folder_uri = folder_uri
        self._buckets: dict[str, pafs.FileSystem] = {}

    def load(self, value: Any, column: str) -> tuple[list[bytes] | None, str | None, str | None]:
        """(images, the URI when the row's one image came from a path, error)."""
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and not value:
            return None, None, f"read: image list in column {column!r} is empty"
        images, uris = [], []
        for position, item in enumerate(items):
            data, uri, reason = self._one(item)
            if reason is not None:
                where = f"image {position + 1} of {len(items)}" if len(items) > 1 else "image"
                return None, None, f"read: {where} in column {column!r} {reason}"
            images.append(data)
            uris.append(uri)
        return images, uris[0] if len(uris) == 1 else None, None

    def _one(self, item: Any) -> tuple[bytes, str | None, str | None]:
        if item is None:
            return b"", None, "is null"
        if isinstance(item, dict):
            if item.get("bytes"):
                return item["bytes"], None, None
            if item.get("path"):
                return self._fetch(str(item["path"]))
            return b"", None, "has neither bytes nor path"
        if isinstance(item, bytes):
            return (item, None, None) if item else (b"", None, "is empty")
        if isinstance(item, str):
            return self._fetch(item) if item else (b"", None, "is an empty path")
        return b"", None, f"has an unsupported value of type {type(item).__name__}"

    def _fetch(self, reference: str) -> tuple[bytes, str | None, str | None]:
        uri = self.resolve(reference)
        try:
            fs, path = self._locate(uri)

            def read() -> bytes:
                with fs.open_input_stream(path) as stream:
                    return stream.read()

            return retry_io(read, f"reading {uri}"), uri, None
        except FileNotFoundError:
            return b"", uri, f"names a file that does not exist: {uri}"
        except (OSError, ValueError, ImportError) as error:  # ValueError/ImportError: an unsupported protocol
            return b"", uri, f"could not be fetched from {uri}: {type(error).__name__}: {error}"

    def resolve(self, reference: str) -> str:
        """Absolute URIs and paths as they are; relative paths against the Parquet file's folder."""
        if "://" in reference or reference.startswith("/"):
            return reference
        return join_uri(self.folder_uri, reference)

    def _locate(self, uri: str) -> tuple[pafs.FileSystem, str]:
        parsed = urlparse(uri)
        if parsed.scheme not in ("s3", "s3a"):
            return filesystem_for(uri, self.options)
        # Building an S3 client costs about 2 ms: one per bucket, not one per row.
        if parsed.netloc not in self._buckets:
            bucket_fs, _ = filesystem_for(f"{parsed.scheme}://{parsed.netloc}", self.options)
            self._buckets[parsed.netloc] = bucket_fs
        return self._buckets[parsed.netloc], parsed.netloc + parsed.path


def json_safe(value: Any) -> Any:
    """A value `json.dumps` writes as standard JSON: no NaN/inf, dates as ISO text, bytes dropped."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return None
    return str(value)
