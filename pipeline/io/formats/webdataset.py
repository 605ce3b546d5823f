"""WebDataset input: plan one shard per tar (.tar, .tar.gz, .tgz; a prefix, brace ranges/lists or globs) and
read a tar's samples.

Writes `id` (tar path/key), `source` (tar URI#key), `image_bytes`, `fields` (JSON of the sidecars), `error`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import posixpath
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llava_batch.operators.video import VIDEO_EXTENSIONS
from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.listing import has_extension, plan_limited, resolve_input_files
from llava_batch.pipeline.io.shards import ReadSpec, Shard, unique_id
from llava_batch.pipeline.io.storage import (
    StorageOptions,
    broken_link,
    filesystem_for,
    join_uri,
    retry_io,
)

logger = logging.getLogger(__name__)

# Tar shards, plain or gzip-compressed (decompressed as they stream, never to disk).
TAR_EXTENSIONS = ("tar", "tar.gz", "tgz")
COMPRESSED_TAR_EXTENSIONS = ("tar.gz", "tgz")
# Priority order when a sample holds more than one image; a video member is the row's input when it has no image.
WEBDATASET_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_INPUT_EXTENSIONS = WEBDATASET_IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
# Binary payloads that are never turned into text fields.
_BINARY_EXTENSIONS = frozenset({*_INPUT_EXTENSIONS, "bmp", "gif", "tif", "tiff", "npy", "pth"})
# Members of the first tar whose headers are looked at for videos before the job starts: its first samples.
_PEEK_MEMBERS = 32
# What a damaged tar raises while it is walked. BadGzipFile is an OSError, but a damaged file is not a store that
# is away: these are never retried.
DAMAGED_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, gzip.BadGzipFile, zlib.error)
# Large sequential reads: one ranged GET per buffer on S3 rather than one per tar header.
_READ_BUFFER_BYTES = 8 << 20


def plan(
    input_uri: str,
    options: StorageOptions,
    *,
    files_per_shard: int,
    limit: int | None,
    group_by: str | None,
    skipped: Counter | None = None,
) -> list[Shard]:
    """One shard per tar (`files_per_shard` does not apply: a tar is read whole)."""
    if group_by is not None:
        raise ConfigError(
            "group_by: not supported for WebDataset input (a sample is already one row: put several images "
            "in one sample, or use Parquet with a list column)"
        )
    return plan_webdataset_shards(input_uri, options, limit=limit)


def read(shard: Shard, options: StorageOptions, spec: ReadSpec) -> Iterator[dict[str, Any]]:
    return read_webdataset_shard(shard, options, spec)


def plan_webdataset_shards(
    input_uri: str, options: StorageOptions, *, limit: int | None = None
) -> list[Shard]:
    """One shard per tar; `limit` counts samples from tar headers only (no image data is read)."""
    root, tars = resolve_input_files(input_uri, options, TAR_EXTENSIONS)
    fs, root_path = filesystem_for(root, options)

    def count_samples(relative: str) -> int:
        path = posixpath.join(root_path, relative)

        def count() -> int:
            # Unbuffered: tarfile reads each 512-byte header and seeks past the data, one small read each.
            with fs.open_input_file(path) as handle:
                scan = _scan_tar(handle, read_data=False, compressed=is_compressed(relative))
            # A broken tar still gives one row: its error row.
            return len(scan.samples) + (scan.failure is not None)

        return retry_io(count, f"counting samples in {join_uri(root, relative)}")

    return plan_limited(root, tars, "webdataset", limit, count_samples)


def video_files(shards: list[Shard], options: StorageOptions) -> list[str]:
    """Video members among the first tar's first few headers (a shard's samples are alike in practice): enough
    to refuse a video job without PyAV before Ray starts, for the cost of one small read. Videos met later
    without PyAV are error rows."""
    if not shards:
        return []
    (relative,) = shards[0].members
    fs, root_path = filesystem_for(shards[0].root, options)
    found: list[str] = []

    def peek() -> None:
        with fs.open_input_file(posixpath.join(root_path, relative)) as handle:
            stream = gzip.GzipFile(fileobj=handle, mode="rb") if is_compressed(relative) else handle
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                for count, member in enumerate(tar):
                    key = sample_key(member.name)
                    if key is not None and key[1] in VIDEO_EXTENSIONS:
                        found.append(f"{relative}/{member.name}")
                    if count + 1 >= _PEEK_MEMBERS:
                        break

    try:
        retry_io(peek, f"looking into {join_uri(shards[0].root, relative)}")
    except DAMAGED_TAR_ERRORS:
        pass  # a damaged tar is its own error row when it is read
    return found


# ---------------------------------------------------------------------------------------------------------------
# Reading one tar
# ---------------------------------------------------------------------------------------------------------------


def is_compressed(relative: str) -> bool:
    return has_extension(relative, COMPRESSED_TAR_EXTENSIONS)


def sample_key(member_name: str) -> tuple[str, str] | None:
    """(key, extension) by the WebDataset rule: the key runs to the first dot of the basename; None for
    members that are not part of a sample (hidden, or with no extension)."""
    name = member_name[2:] if member_name.startswith("./") else member_name
    folder, base = posixpath.split(name)
    if base.startswith(".") or base.startswith("__") or "." not in base:
        return None
    stem, extension = base.split(".", 1)
    return posixpath.join(folder, stem), extension.lower()


def is_metadata(member_name: str) -> bool:
    """Members that are no one's input: WebDataset's own `__key__`-style files and macOS folder metadata."""
    base = posixpath.basename(member_name)
    return base.startswith("__") or base == ".DS_Store" or base.startswith("._")


@dataclass
class TarSample:
    """One row's members (extension -> bytes, or b"" when data was not read); `problem` makes it an error row
    (a member that belongs to no sample, a key seen before)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class TarScan:
    """Rows of a tar in tar order, and why the scan stopped early, if it did. Samples listed are complete:
    one that may have members past a break is dropped and named in `lost_key`. `skipped` counts members
    left out on purpose (folders, links, metadata) by reason."""

    samples: list[TarSample] = field(default_factory=list)
    failure: str | None = None
    lost_key: str | None = None
    skipped: Counter = field(default_factory=Counter)
    reading: TarSample | None = None  # the sample whose member data is being read


def _scan_tar(handle: Any, *, read_data: bool, compressed: bool = False) -> TarScan:
    """Walk a tar from a seekable file; corruption ends the scan, OSErrors of the store propagate (retried)."""
    scan = TarScan()
    next_name = None
    try:
        # GzipFile as it is: a wider buffer on top would, at a cut, lose with its failed read the complete
        # samples it had already decompressed. (Seeking back to the end-of-archive block stays inside the
        # gzip buffer, except when that block straddles a refill: then that tar is decompressed once more.)
        stream = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
        with tarfile.open(fileobj=stream, mode="r:") as tar:
            positions: dict[str, int] = {}
            for member in tar:
                _add_member(scan, tar, member, positions, read_data=read_data)
            # tarfile ends quietly at a truncated or garbled header after the first member; only the
            # end-of-archive block (512 zero bytes) tells a whole tar from one cut short at a member boundary.
            stream.seek(tar.offset)
            block = stream.read(tarfile.BLOCKSIZE)
            if len(block) < tarfile.BLOCKSIZE or block.strip(b"\0"):
                next_name = _name_in_cut_header(block)
                raise tarfile.ReadError(
                    f"no end-of-archive block at byte {tar.offset} (cut short or corrupt after a member)"
                )
    except DAMAGED_TAR_ERRORS as error:
        scan.failure = f"{type(error).__name__}: {error}"
        scan.lost_key = _drop_unfinished(scan, next_name)
    return scan


def _add_member(
    scan: TarScan,
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    positions: dict[str, int],
    *,
    read_data: bool,
) -> None:
    name = member.name[2:] if member.name.startswith("./") else member.name
    if not member.isfile():
        scan.skipped["folders" if member.isdir() else "links and special members"] += 1
        return
    if is_metadata(name):
        scan.skipped["metadata members (__*, .DS_Store, ._*)"] += 1
        return
    key = sample_key(name)
    if key is None:  # a stray member (`README`, `.jpg`): a row of its own, saying why it is no sample
        problem = f"tar member {name!r} belongs to no sample (WebDataset member names are <key>.<extension>)"
        scan.samples.append(TarSample(name, problem=problem))
        return
    stem, extension = key
    current = scan.samples[-1] if scan.samples else None
    # A sample's members are adjacent: the same key further on (or the same member twice) is another sample.
    # (A sample without members is a stray member's row.)
    if current is None or not current.members or current.key != stem or extension in current.members:
        current = _new_sample(scan, stem, positions)
    # Registered before its data is read, so a break inside the data marks this sample as lost.
    scan.reading = current
    extracted = tar.extractfile(member) if read_data else None
    current.members[extension] = extracted.read() if extracted is not None else b""
    scan.reading = None


def _new_sample(scan: TarScan, key: str, positions: dict[str, int]) -> TarSample:
    position = len(scan.samples) + 1
    problem = None
    if key in positions:
        problem = (
            f"duplicate sample key {key!r}: sample {position} of the tar repeats sample {positions[key]} "
            "(a sample's members must be adjacent)"
        )
    else:
        positions[key] = position
    sample = TarSample(key, problem=problem)
    scan.samples.append(sample)
    return sample


def _name_in_cut_header(block: bytes) -> str | None:
    """The member name in a header that the end of the file cut short, if the cut left it whole; None when it
    cannot be known (nothing left, a whole but garbled header, a pax/GNU header that names the next one)."""
    if not 0 < len(block) < tarfile.BLOCKSIZE or b"\0" not in block[:100]:
        return None
    typeflag = block[156:157]
    if typeflag in (b"x", b"g", b"L", b"K"):
        return None
    try:
        name = block[: block.index(b"\0")].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name or None


def _drop_unfinished(scan: TarScan, next_name: str | None) -> str | None:
    """Drop the sample that may have members past the break; return the key where reading stopped.

    The last sample is complete when the break came in the header of a member that belongs to another
    sample (its name survived the cut), or when it is a stray member (a row of one member)."""
    last = scan.samples[-1] if scan.samples else None
    if last is None:
        return None
    if scan.reading is None and not last.members:
        return _key_of(next_name)
    if scan.reading is None and next_name is not None:
        next_key = _key_of(next_name)
        # Compare basenames: a ustar prefix (a folder) may have been cut from the name.
        if posixpath.basename(next_key) != posixpath.basename(last.key):
            return next_key
    scan.samples.pop()
    return last.key


def _key_of(name: str | None) -> str | None:
    if name is None:
        return None
    key = sample_key(name)
    return name if key is None else key[0]


def read_webdataset_shard(shard: Shard, options: StorageOptions, spec: ReadSpec) -> Iterator[dict[str, Any]]:
    """One row per sample key in tar order; a broken tar gives its complete samples, then one error row."""
    (relative,) = shard.members
    tar_uri = join_uri(shard.root, relative)
    fs, root_path = filesystem_for(shard.root, options)
    path = posixpath.join(root_path, relative)

    def read() -> TarScan:
        with io.BufferedReader(fs.open_input_file(path), buffer_size=_READ_BUFFER_BYTES) as handle:
            return _scan_tar(handle, read_data=True, compressed=is_compressed(relative))

    link_problem = broken_link(fs, path)
    try:
        scan = TarScan(failure=link_problem) if link_problem else retry_io(read, f"reading {tar_uri}")
    except FileNotFoundError:
        scan = TarScan(failure="file disappeared between listing and reading")
    except OSError as error:
        scan = TarScan(failure=f"{type(error).__name__}: {error}")
    if scan.skipped:
        counts = ", ".join(f"{count} {reason}" for reason, count in sorted(scan.skipped.items()))
        logger.info("%s: skipped %s", tar_uri, counts)

    used: set[str] = set()
    for position, sample in enumerate(scan.samples, start=1):
        sample_id = unique_id(f"{relative}/{sample.key}", position, used)
        used.add(sample_id)
        yield _sample_row(sample_id, f"{tar_uri}#{sample.key}", sample, spec)
    if scan.failure is not None:
        detail = ""
        if scan.lost_key is not None:
            detail = f" (after {len(scan.samples)} complete samples; lost from sample {scan.lost_key!r} on)"
        elif scan.samples:
            detail = f" (after {len(scan.samples)} complete samples)"
        logger.warning("cannot read tar %s: %s%s", tar_uri, scan.failure, detail)
        yield {
            "id": unique_id(relative, len(scan.samples) + 1, used),
            "source": tar_uri,
            "image_bytes": None,
            "fields": json.dumps({}),
            "error": f"read: cannot read tar: {scan.failure}{detail}",
            **{name: None for name in spec.keep_columns},
        }


def _sample_row(sample_id: str, source: str, sample: TarSample, spec: ReadSpec) -> dict[str, Any]:
    members = sample.members
    fields: dict[str, Any] = {}
    error = None if sample.problem is None else f"read: {sample.problem}"
    if "json" in members:
        try:
            parsed = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as problem:
            error = error or f"read: bad JSON sidecar: {problem}"
        else:
            # A sidecar that is not an object (a list, a string) is kept whole under `json`.
            fields.update(parsed if isinstance(parsed, dict) else {"json": parsed})
    for extension, data in members.items():
        if extension == "json" or extension in _BINARY_EXTENSIONS:
            continue
        try:
            fields[extension] = data.decode("utf-8")
        except UnicodeDecodeError:
            logger.debug("%s: member .%s is not UTF-8 text; not a field", source, extension)
    image = next((members[ext] for ext in _INPUT_EXTENSIONS if ext in members), None)
    if image is None and error is None:
        error = (
            f"read: sample has no image ({'/'.join(WEBDATASET_IMAGE_EXTENSIONS)}) or video "
            f"({'/'.join(VIDEO_EXTENSIONS)}) in the tar"
        )
    return {
        "id": sample_id,
        "source": source,
        "image_bytes": None if error is not None or image is None else [image],
        "fields": json.dumps(fields),
        "error": error,
        **{name: fields.get(name) for name in spec.keep_columns},
    }
