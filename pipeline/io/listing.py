"""Which files an input names: a folder or prefix (listed recursively), one file, or a pattern with brace ranges,
brace lists and globs; and the one-shard-per-file plans of the file formats (WebDataset tars, Parquet tables).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from itertools import product

import pyarrow.fs as pafs

from llava_batch.pipeline.io.shards import Shard, shard_id_for
from llava_batch.pipeline.io.storage import (
    PATTERN_CHARACTERS,
    StorageOptions,
    filesystem_for,
    fixed_prefix,
    join_uri,
    list_tree,
    retry_io,
)

# Missing names listed in the error when a brace pattern names files that do not exist.
_MISSING_SHOWN = 5

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


def expand_braces(pattern: str) -> list[str]:
    """Expand `{a,b}` lists and `{000..009}` ranges like bash: left to right, nested braces allowed.

    A range whose ends are written zero-padded keeps their width. Text in braces that is neither a list nor a
    range (say `{x}`) stays as it is.
    """
    start = pattern.find("{")
    while start != -1:
        end = _matching_brace(pattern, start)
        if end == -1:
            return [pattern]
        choices = _brace_choices(pattern[start + 1 : end])
        if choices is not None:
            head, tail = pattern[:start], pattern[end + 1 :]
            expanded = [head + choice for choice in choices]
            return [a + b for a, b in product(_expand_all(expanded), expand_braces(tail))]
        start = pattern.find("{", start + 1)
    return [pattern]


def _expand_all(patterns: list[str]) -> list[str]:
    return [text for pattern in patterns for text in expand_braces(pattern)]


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    return -1


def _brace_choices(inner: str) -> list[str] | None:
    numeric = _RANGE.match(inner)
    if numeric:
        first, last, step_text = numeric.groups()
        step = abs(int(step_text)) if step_text else 1
        if step == 0:
            raise ValueError(f"input pattern: brace range {{{inner}}} has a step of 0")
        low, high = int(first), int(last)
        padded = any(len(end.lstrip("-")) > 1 and end.lstrip("-").startswith("0") for end in (first, last))
        width = max(len(first), len(last)) if padded else 0
        values = range(low, high + 1, step) if low <= high else range(low, high - 1, -step)
        return [f"{value:0{width}d}" for value in values]
    parts, depth, current = [], 0, []
    for char in inner:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += (char == "{") - (char == "}")
        current.append(char)
    parts.append("".join(current))
    return parts if len(parts) > 1 else None


def is_hidden(path: str) -> bool:
    name = posixpath.basename(path)
    return name.startswith(".") or name.startswith("_")


def _glob_match(pattern: str, path: str) -> bool:
    """Shell-glob semantics: `*`, `?` and `[...]` never cross a '/'."""
    pattern_parts, path_parts = pattern.split("/"), path.split("/")
    return len(pattern_parts) == len(path_parts) and all(
        fnmatchcase(name, part) for part, name in zip(pattern_parts, path_parts)
    )


def _has_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _list_relative(fs: pafs.FileSystem, root: str, uri: str, *, recursive: bool) -> list[str]:
    return sorted(list_tree(fs, root, uri, recursive=recursive))


def has_extension(path: str, extensions: tuple[str, ...]) -> bool:
    return path.lower().endswith(tuple("." + extension for extension in extensions))


def resolve_input_files(
    input_uri: str, options: StorageOptions, extensions: tuple[str, ...]
) -> tuple[str, list[str]]:
    """(root URI, relative paths) of the files with one of `extensions` that an input names, in plan order.

    The input is a folder or prefix (listed recursively, sorted, hidden files skipped), a single file, or a
    pattern with braces and/or globs (expansion order; each glob's matches sorted). A brace-expanded name that
    does not exist raises FileNotFoundError listing the first few missing names.
    """
    wanted = "/".join("." + extension for extension in extensions)
    if not any(char in input_uri for char in PATTERN_CHARACTERS):
        fs, path = filesystem_for(input_uri, options)
        info = retry_io(lambda: fs.get_file_info(path), f"looking up {input_uri}")
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(
                f"input {input_uri!r} does not exist (nothing found at that path or prefix)"
            )
        if info.type == pafs.FileType.File:
            folder, _, name = input_uri.rstrip("/").rpartition("/")
            return (folder or "/") if "/" in input_uri else ".", [name]
        found = [
            relative
            for relative in _list_relative(fs, path, input_uri, recursive=True)
            if has_extension(relative, extensions) and not is_hidden(relative)
        ]
        if not found:
            raise FileNotFoundError(f"input {input_uri!r}: no {wanted} files under that prefix")
        return input_uri, found

    # A pattern: list its fixed prefix once and match every expanded name against that listing.
    prefix = fixed_prefix(input_uri)
    root = prefix.rstrip("/") or prefix or "."
    expanded = list(dict.fromkeys(expand_braces(input_uri[len(prefix) :])))
    fs, root_path = filesystem_for(root, options)
    info = retry_io(lambda: fs.get_file_info(root_path), f"looking up {root}")
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"input {input_uri!r}: its folder or prefix {root!r} does not exist")
    listing = _list_relative(fs, root_path, root, recursive=any("/" in name for name in expanded))
    present = set(listing)
    chosen: dict[str, None] = {}
    missing = []
    for name in expanded:
        if _has_glob(name):
            for relative in listing:
                if (
                    has_extension(relative, extensions)
                    and not is_hidden(relative)
                    and _glob_match(name, relative)
                ):
                    chosen.setdefault(relative)
        elif name in present:
            chosen.setdefault(name)
        else:
            missing.append(name)
    if missing:
        shown = ", ".join(join_uri(root, name) for name in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise FileNotFoundError(
            f"input {input_uri!r}: {len(missing)} of the {len(expanded)} names it expands to do not exist: "
            f"{shown}{more}"
        )
    if not chosen:
        raise FileNotFoundError(f"input {input_uri!r}: no {wanted} files match the pattern")
    return root, list(chosen)


def plan_limited(
    root: str, files: list[str], kind: str, limit: int | None, count_rows: Callable[[str], int]
) -> list[Shard]:
    """One shard per file; with `limit`, files in order until `limit` rows are covered (`count_rows(relpath)`
    gives a file's rows), the last one cut to the remainder. Limited plans get their own shard ids."""
    if limit is None:
        return [Shard(shard_id_for((relative,)), root, (relative,), kind) for relative in files]
    if limit < 1:
        raise ValueError(f"limit: {limit!r} must be at least 1")
    selection = f"limit={limit}"
    shards = []
    remaining = limit
    for relative in files:
        rows = count_rows(relative)
        row_limit = remaining if rows >= remaining else None
        shards.append(Shard(shard_id_for((relative,), selection), root, (relative,), kind, row_limit))
        remaining -= rows
        if remaining <= 0:
            break
    return shards
