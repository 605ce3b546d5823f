"""URIs to filesystems: local paths, file://, s3:// (pyarrow's native S3) and any other fsspec protocol.

Workers rebuild filesystems from a small `StorageOptions` value, so credentials are never pickled into tasks.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from llava_batch.operators.video import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
# What an image folder's files can be: a video file is one row too (its sampled frames: llava_batch.operators.video).
IMAGE_FOLDER_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


@dataclass(frozen=True)
class StorageOptions:
    """What a worker needs to reach the object store; the secrets stay in the standard AWS chain."""

    s3_endpoint_url: str | None = None

    def resolved_s3_endpoint(self) -> str | None:
        return (
            self.s3_endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )


def normalize_uri(uri: str) -> str:
    """A canonical form for comparisons and provenance: local paths become absolute `file://` URIs."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return "file://" + os.path.abspath(os.path.expanduser(path))
    return uri


PATTERN_CHARACTERS = "{*?["


def fixed_prefix(uri: str) -> str:
    """The part of a URI before its first brace or glob character, cut back to a folder."""
    cut = min((uri.index(char) for char in PATTERN_CHARACTERS if char in uri), default=None)
    if cut is None:
        return uri
    return uri[: uri.rfind("/", 0, cut) + 1]


def is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def absolute_local_path(uri: str) -> str:
    """A plain relative path made absolute (against this process's working directory); URIs stay as they are."""
    return os.path.abspath(uri) if urlparse(uri).scheme == "" else uri


def filesystem_for(
    uri: str, options: StorageOptions, *, attempts: int | None = None
) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path inside it) for a URI; `attempts` caps the S3 client's own tries per call."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return pafs.LocalFileSystem(), normalize_uri(uri)[len("file://") :]
    if parsed.scheme in ("s3", "s3a"):
        # pyarrow's native S3 client reads 3-4x faster than s3fs behind FSSpecHandler (measured here);
        # it takes keys, profiles and instance roles from the AWS default chain.
        endpoint = options.resolved_s3_endpoint()
        kwargs: dict = {
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        }
        if endpoint:
            endpoint_parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = endpoint_parsed.netloc or endpoint_parsed.path
            kwargs["scheme"] = endpoint_parsed.scheme or "https"
        # Retries with backoff ride out a flapping object store instead of failing the shard.
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=attempts or S3_CALL_ATTEMPTS)
        return pafs.S3FileSystem(**kwargs), (parsed.netloc + parsed.path).rstrip("/")
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fsspec.core.url_to_fs(uri)
    return PyFileSystem(FSSpecHandler(fs)), path.rstrip("/")


def join_uri(base: str, *parts: str) -> str:
    return posixpath.join(base.rstrip("/"), *parts)


def list_files(
    uri: str,
    options: StorageOptions,
    extensions: tuple[str, ...],
    *,
    log_skipped: bool = True,
    skipped_out: Counter | None = None,
) -> list[str]:
    """Sorted relative paths of the files under `uri` whose extension is in `extensions` (case-insensitive).

    Files with other extensions (text, ...) are skipped: one log line counts them by extension, and
    `skipped_out` (for the manifest) gets the counts added.
    """
    fs, root = filesystem_for(uri, options)
    info = retry_io(lambda: fs.get_file_info(root), f"looking up {uri}")
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {uri!r} does not exist (nothing found at that path or prefix)")
    if info.type == pafs.FileType.File:
        raise NotADirectoryError(
            f"input {uri!r} is a single file; pass the folder or prefix that holds the images"
        )
    relative, skipped = [], Counter()
    for path in list_tree(fs, root, uri):
        extension = file_extension(path, extensions)
        if extension in extensions:
            relative.append(path)
        else:
            skipped[extension] += 1
    if skipped and log_skipped:
        noun = (
            "non-image"
            if set(extensions) <= set(IMAGE_EXTENSIONS)
            else "non-image, non-video"
            if set(extensions) <= set(IMAGE_FOLDER_EXTENSIONS)
            else "other"
        )
        logger.info("%s: skipped %s", uri, skipped_text(skipped, noun))
    if skipped_out is not None:
        skipped_out.update(skipped)
    return sorted(relative)


def file_extension(path: str, known: tuple[str, ...] = ()) -> str:
    """The lower-case extension (without its dot, '' when none); one of `known` wins when the name ends with
    it, so that 'tar.gz' is found whole."""
    lowered = posixpath.basename(path).lower()
    for extension in sorted(known, key=len, reverse=True):
        if lowered.endswith("." + extension):
            return extension
    return os.path.splitext(lowered)[1][1:]


def skipped_text(skipped: Counter, noun: str) -> str:
    """`3 non-image files (.mp4: 2, .txt: 1)`: most frequent extension first."""
    total = sum(skipped.values())
    counts = ", ".join(
        f"{'.' + extension if extension else '(no extension)'}: {count}"
        for extension, count in sorted(skipped.items(), key=lambda item: (-item[1], item[0]))
    )
    return f"{total} {noun} file{'s' if total != 1 else ''} ({counts})"


def list_tree(fs: pafs.FileSystem, root: str, uri: str, *, recursive: bool = True) -> list[str]:
    """Relative paths of the files under `root`. On a local disk symlinks are followed but each real folder
    and file is listed once (a link loop such as `up -> ..` would list the tree again and again), and a
    broken symlink is listed, so that reading it gives an error row that names it."""
    if isinstance(fs, pafs.LocalFileSystem):
        return local_tree(root, recursive=recursive)
    selector = pafs.FileSelector(root, recursive=recursive)
    listing = retry_io(lambda: fs.get_file_info(selector), f"listing {uri}")
    return [posixpath.relpath(entry.path, root) for entry in listing if entry.type == pafs.FileType.File]


def local_tree(root: str, *, recursive: bool = True) -> list[str]:
    """Sorted relative paths of the files under a local folder, each real file once.

    Real folders are walked first; a symlinked folder is walked afterwards only if its target was not walked
    yet, so the real path wins over an alias and a loop ends. A symlinked file whose target is already listed
    is left out; a dangling one stays in.
    """
    files: list[str] = []
    real_files: set[str] = set()
    linked_files: list[tuple[str, str]] = []  # (relative path, absolute path) of symlinks to files
    visited: set[str] = set()
    linked_folders: list[tuple[str, str]] = []
    left_out = 0

    def walk(folder: str, relative_folder: str) -> None:
        real_folder = os.path.realpath(folder)
        if real_folder in visited:
            nonlocal left_out
            left_out += 1
            return
        visited.add(real_folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                relative = posixpath.join(relative_folder, entry.name) if relative_folder else entry.name
                if entry.is_symlink():
                    if os.path.isdir(entry.path):  # False for dangling and looping links
                        linked_folders.append((relative, entry.path))
                    else:
                        linked_files.append((relative, entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    if recursive:
                        walk(entry.path, relative)
                elif entry.is_file(follow_symlinks=False):
                    files.append(relative)
                    real_files.add(os.path.join(real_folder, entry.name))

    walk(root, "")
    while recursive and linked_folders:
        linked_folders.sort(reverse=True)  # the smallest relative path next
        relative, path = linked_folders.pop()
        walk(path, relative)
    for relative, path in sorted(linked_files):
        target = os.path.realpath(path)
        if not os.path.exists(path):
            files.append(relative)  # dangling or looping: read as an error row naming the link
        elif target in real_files:
            left_out += 1
        elif os.path.isfile(target):
            files.append(relative)
            real_files.add(target)
    if left_out:
        logger.info(
            "%s: left out %d symlink(s) to folders or files already listed (loops or aliases)", root, left_out
        )
    return sorted(files)


def broken_link(fs: pafs.FileSystem, path: str) -> str | None:
    """`broken symlink -> target` (or a link loop) for a local symlink that leads nowhere, else None.

    Checked before reading: a looping link raises an OSError that would otherwise be retried as if the store
    were away."""
    if not isinstance(fs, pafs.LocalFileSystem) or not os.path.islink(path) or os.path.exists(path):
        return None
    target = os.readlink(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"broken symlink -> {target}"
    except OSError as error:
        return f"symlink loop -> {target} ({error.strerror})"
    return None


def read_bytes(uri: str, options: StorageOptions) -> bytes:
    fs, path = filesystem_for(uri, options)

    def read() -> bytes:
        with fs.open_input_stream(path) as stream:
            return stream.read()

    return retry_io(read, f"reading {uri}")


def list_names(uri: str, options: StorageOptions) -> list[str]:
    """Names of the files directly under `uri` (empty when it does not exist)."""
    fs, root = filesystem_for(uri, options)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    selector = pafs.FileSelector(root, recursive=False, allow_not_found=True)
    return sorted(
        posixpath.basename(entry.path)
        for entry in fs.get_file_info(selector)
        if entry.type == pafs.FileType.File
    )


# An object store that goes away (restart, failover, throttling) is waited for this long before a read or
# write gives up; a minute covers the restarts seen in practice without hiding a store that is really gone.
RETRY_BUDGET_S = 60.0
# Before a job starts, a store that does not answer is most likely a wrong endpoint or one that is down: a few
# short tries, then one clear error, instead of a minute of retries (`check_store`).
START_BUDGET_S = 6.0
# The S3 client's own tries per call (its backoff grows: a refused connection takes about 94 s over 10 tries,
# 0.8 s over 2, measured). Calls not wrapped in retry_io rely on them to ride out a short outage.
S3_CALL_ATTEMPTS = 10

# Errors no retry can fix: the cause the user reads, keyed by the codes pyarrow (AWS SDK), botocore / s3fs and
# curl put in their messages.
PERMANENT_CAUSES = (
    ("ACCESS_DENIED", "access denied (check the S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"),
    ("AccessDenied", "access denied (check the S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"),
    ("INVALID_ACCESS_KEY_ID", "access denied: invalid access key id (check AWS_ACCESS_KEY_ID)"),
    ("InvalidAccessKeyId", "access denied: invalid access key id (check AWS_ACCESS_KEY_ID)"),
    ("SIGNATURE_DOES_NOT_MATCH", "access denied: signature mismatch (check AWS_SECRET_ACCESS_KEY)"),
    ("SignatureDoesNotMatch", "access denied: signature mismatch (check AWS_SECRET_ACCESS_KEY)"),
    (
        "signature we calculated does not match",
        "access denied: signature mismatch (check AWS_SECRET_ACCESS_KEY)",
    ),
    ("NO_SUCH_BUCKET", "no such bucket"),
    ("NoSuchBucket", "no such bucket"),
    ("specified bucket does not exist", "no such bucket"),
    (
        "Could not resolve host",
        "invalid endpoint URL: its host name does not resolve (check --s3-endpoint-url)",
    ),
    ("curlCode: 3,", "invalid endpoint URL (check --s3-endpoint-url)"),
    ("Invalid endpoint", "invalid endpoint URL (check --s3-endpoint-url)"),
    (
        "Unable to locate credentials",
        "no S3 credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    ),
)


class StoreError(OSError):
    """The object store refused a request for a reason retrying cannot fix (credentials, bucket, endpoint), or did
    not answer when the job started. The message is one line naming the URI and the cause."""


def permanent_cause(error: BaseException) -> str | None:
    """The user-facing cause when `error` cannot pass by itself; None for transient errors (worth a retry)."""
    text = str(error)
    for marker, cause in PERMANENT_CAUSES:
        if marker in text:
            return cause
    if isinstance(error, PermissionError):  # s3fs maps 403s to PermissionError
        return "access denied (check the S3 credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    return None


def retry_io(
    action: Callable[[], T], what: str, *, budget_s: float = RETRY_BUDGET_S, uri: str | None = None
) -> T:
    """Run `action`, retrying transient OSErrors (connection refused, timeouts, 5xx) with exponential backoff
    (0.5 s doubling up to 8 s) until `budget_s` is spent; then the last error is raised.

    A missing file is raised at once. Permanent errors (access denied, bad keys, no such bucket, an endpoint
    that does not resolve) are raised at once as a one-line StoreError naming `uri` (default: `what`).
    """
    deadline = time.monotonic() + budget_s
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except FileNotFoundError:
            raise
        except StoreError:
            raise
        except OSError as error:
            cause = permanent_cause(error)
            if cause is not None:
                raise StoreError(f"{uri or what}: {cause}") from error
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s failed (attempt %d), retrying in %.1fs: %s", what, attempt, delay, error)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def check_store(uri: str, options: StorageOptions, *, budget_s: float = START_BUDGET_S) -> None:
    """Fail fast, before a job starts, on an object store the job cannot use: wrong credentials, a bucket that
    does not exist, an endpoint that does not resolve or does not answer within `budget_s` (StoreError).
    Local paths pass; so does a URI that does not exist yet in an existing bucket (an output)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a"):
        return
    fs, _ = filesystem_for(uri, options, attempts=2)
    path = (parsed.netloc + fixed_prefix(parsed.path)).rstrip("/") or parsed.netloc

    def look(target: str) -> pafs.FileInfo:
        return retry_io(lambda: fs.get_file_info(target), f"reaching {uri}", budget_s=budget_s, uri=uri)

    try:
        info = look(path)
        if info.type == pafs.FileType.NotFound and path != parsed.netloc:
            info = look(parsed.netloc)  # an output that does not exist yet: is its bucket there?
    except StoreError:
        raise
    except OSError as error:
        endpoint = options.resolved_s3_endpoint() or "AWS S3"
        raise StoreError(
            f"{uri}: the object store at {endpoint} does not answer ({_first_line(error)}); "
            f"is the endpoint right and the store up?"
        ) from error
    if info.type == pafs.FileType.NotFound:  # the bucket itself (HeadBucket) is not there
        raise StoreError(f"{uri}: no such bucket {parsed.netloc!r}")


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def write_parquet_atomically(table: pa.Table, uri: str, options: StorageOptions) -> None:
    """Write a whole Parquet file so that readers see it complete or not at all (retried while the store is away).

    S3 objects appear only when their upload completes; other filesystems get a temporary name then a rename.
    """
    retry_io(lambda: _write_parquet_once(table, uri, options), f"writing {uri}")


def _write_parquet_once(table: pa.Table, uri: str, options: StorageOptions) -> None:
    fs, path = filesystem_for(uri, options)
    parent = posixpath.dirname(path)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.S3FileSystem):
        pq.write_table(table, path, filesystem=fs)
        return
    temporary = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    pq.write_table(table, temporary, filesystem=fs)
    fs.move(temporary, path)


def write_text(uri: str, text: str, options: StorageOptions) -> None:
    retry_io(lambda: _write_text_once(uri, text, options), f"writing {uri}")


def _write_text_once(uri: str, text: str, options: StorageOptions) -> None:
    fs, path = filesystem_for(uri, options)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def delete_file(uri: str, options: StorageOptions) -> None:
    fs, path = filesystem_for(uri, options)
    fs.delete_file(path)


def delete_object(uri: str, options: StorageOptions) -> None:
    """Delete one file and leave nothing behind. On S3 this goes through s3fs: pyarrow's delete_file re-creates
    an empty `parent/` marker object (seen with pyarrow 26), which listings then show as a zero-byte file."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a"):
        delete_file(uri, options)
        return
    import s3fs
    from botocore.exceptions import BotoCoreError

    endpoint = options.resolved_s3_endpoint()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})

    def delete() -> None:
        try:
            fs.rm_file(parsed.netloc + parsed.path)
        except BotoCoreError as error:  # connection refused / timeouts: not OSErrors, but just as transient
            raise OSError(str(error)) from error

    retry_io(delete, f"deleting {uri}")
