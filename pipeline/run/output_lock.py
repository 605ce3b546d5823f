"""One run per output: a `_lock.json` object in the output location, kept alive by a heartbeat.

Two runs writing one output (two cron ticks, a retry while the first still runs) would race on the same shards
and the manifest. The lock holds its owner (host, pid, run id), when it was taken and a heartbeat that a
background thread refreshes; a lock whose heartbeat is older than the TTL belongs to a dead run and is taken over.

Atomicity: on a local filesystem the lock is created with an exclusive link, so two runs cannot both create
it. On S3 every change is a conditional write: the lock is created with `If-None-Match: *` (only if absent), and
a heartbeat, a takeover of a stale lock and the release (a delete) carry `If-Match: <ETag>` of the version this
run last saw, so of two runs racing for one lock exactly one succeeds and the other sees who holds it (AWS S3
and SeaweedFS honour both headers). Heartbeats compare wall clocks of different hosts: keep their skew well
below the TTL (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from llava_batch.pipeline.io.storage import StorageOptions, delete_object, filesystem_for, join_uri, retry_io

logger = logging.getLogger(__name__)

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 30.0
# Three missed heartbeats: a run that is only slow (a long GC pause, a flapping store) keeps its lock.
TTL_S = 3 * HEARTBEAT_S


class OutputLocked(RuntimeError):
    """Another live run holds the output's lock."""


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    run_id: str
    acquired_at: str
    heartbeat_at: str

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, started {self.acquired_at})"


def owner_died_on_this_host(owner: LockOwner) -> bool:
    """True only when the owner ran on this host and its pid no longer exists (a reused pid counts as alive,
    so the TTL still applies then)."""
    if owner.host != socket.gethostname() or owner.pid <= 0 or owner.pid == os.getpid():
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, belongs to another user
        return False
    return False


def _now() -> datetime:
    return datetime.now(timezone.utc)


class OutputLock:
    """Context manager: `with OutputLock(uri, options): ...` holds the lock for the block, released even on error."""

    def __init__(
        self,
        output_uri: str,
        options: StorageOptions,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        ttl_s: float = TTL_S,
    ) -> None:
        self.uri = join_uri(output_uri, LOCK_FILE)
        self.options = options
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self._s3 = (
            None
            if isinstance(filesystem_for(self.uri, options)[0], pafs.LocalFileSystem)
            else S3Object(self.uri, options)
        )
        self._etag: str | None = None  # S3: the version of the lock this run wrote last
        self.run_id = uuid.uuid4().hex[:12]
        self.owner: LockOwner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # 1. Taking the lock -------------------------------------------------------------------------------------
    def acquire(self) -> None:
        current, seen_etag = self._read_versioned()
        if current is not None:
            age = self.heartbeat_age(current)
            if age <= self.ttl_s and owner_died_on_this_host(current):
                # A run killed on this machine (Ctrl-C twice, SIGKILL, OOM) and re-run at once: no need to wait
                # out the TTL when its process is visibly gone.
                logger.warning(
                    "taking over the lock of a dead run: %s, its process is gone", current.describe()
                )
            elif age <= self.ttl_s:
                raise OutputLocked(
                    f"output is locked by {current.describe()}, last heartbeat {age:.0f}s ago ({self.uri}). "
                    f"Another run of this job is writing there; wait for it to finish. If that run is dead, "
                    f"its lock is taken over {self.ttl_s:.0f}s after its last heartbeat (or delete {self.uri})."
                )
            else:
                logger.warning(
                    "taking over a stale lock: %s sent its last heartbeat %.0fs ago (TTL %.0fs)",
                    current.describe(),
                    age,
                    self.ttl_s,
                )
        stamp = _now().isoformat()
        self.owner = LockOwner(socket.gethostname(), os.getpid(), self.run_id, stamp, stamp)
        if self._s3 is None:
            self._create_local(filesystem_for(self.uri, self.options)[1], replace=current is not None)
        else:
            # Created only if absent, or replacing exactly the stale version read above: one racer wins.
            self._etag = self._s3.put(self._text(), if_match=seen_etag)
        holder = self.read()
        if holder is None or holder.run_id != self.run_id:
            raise OutputLocked(
                f"output is locked by {holder.describe() if holder else 'another run'}: it took the lock at "
                f"the same moment as this run ({self.uri}); this run stops, the other one goes on"
            )
        self._thread = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()
        logger.info("holding the output lock %s as run %s", self.uri, self.run_id)

    def _create_local(self, path: str, *, replace: bool) -> None:
        """Exclusive create: a link fails if the name exists, so exactly one of two racing runs gets it."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{self.run_id}.tmp"
        with open(temporary, "w") as handle:
            handle.write(self._text())
        try:
            if replace:  # the stale lock; if another run replaced it first, our link below fails
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            os.link(temporary, path)
        except FileExistsError:
            pass  # the read-back in acquire() reports who holds it
        finally:
            os.unlink(temporary)

    # 2. Keeping it ------------------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self.read()
                if holder is None or holder.run_id != self.run_id:
                    logger.error(
                        "lost the output lock %s to %s; this run's heartbeat stops",
                        self.uri,
                        holder.describe() if holder else "nobody (deleted)",
                    )
                    return
                assert self.owner is not None
                self.owner = LockOwner(**{**asdict(self.owner), "heartbeat_at": _now().isoformat()})
                if not self._write():
                    logger.error(
                        "lost the output lock %s: it changed under this run; heartbeat stops", self.uri
                    )
                    return
            except OSError as error:  # a flapping store: the next beat tries again, the TTL leaves room
                logger.warning("output lock heartbeat failed: %s", error)

    # 3. Giving it back --------------------------------------------------------------------------------------
    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.owner is None:
            return
        self.owner = None
        try:
            holder = self.read()
            if holder is not None and holder.run_id == self.run_id:
                if self._s3 is None:
                    delete_object(self.uri, self.options)
                elif not self._s3.delete(if_match=self._etag):
                    logger.warning("output lock %s changed before its release; left as it is", self.uri)
                    return
                logger.info("released the output lock %s", self.uri)
        except Exception as error:  # never fail a finished run here: the lock goes stale after the TTL
            logger.warning("could not release the output lock %s: %s", self.uri, error)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # Helpers ------------------------------------------------------------------------------------------------
    def read(self) -> LockOwner | None:
        return self._read_versioned()[0]

    def _read_versioned(self) -> tuple[LockOwner | None, str | None]:
        """The lock's owner and, on S3, the ETag of the version read (what a takeover must replace)."""
        if self._s3 is not None:
            text, etag = self._s3.get()
            return self._parse(text), etag
        fs, path = filesystem_for(self.uri, self.options)

        def load() -> str | None:
            try:
                with fs.open_input_stream(path) as stream:
                    return stream.read().decode()
            except FileNotFoundError:
                return None

        return self._parse(retry_io(load, f"reading {self.uri}")), None

    def _parse(self, text: str | None) -> LockOwner | None:
        if text is None:
            return None
        try:
            return LockOwner(**json.loads(text))
        except (ValueError, TypeError):
            # Unreadable: treat as taken long ago so that a later run can recover from it.
            logger.warning("output lock %s is unreadable; treating it as stale", self.uri)
            return LockOwner("?", 0, "?", "?", datetime.fromtimestamp(0, timezone.utc).isoformat())

    def heartbeat_age(self, owner: LockOwner) -> float:
        return (_now() - datetime.fromisoformat(owner.heartbeat_at)).total_seconds()

    def _text(self) -> str:
        assert self.owner is not None
        return json.dumps(asdict(self.owner), indent=2)

    def _write(self) -> bool:
        """Rewrite this run's lock (heartbeat); False when it is no longer the version this run wrote."""
        if self._s3 is not None:
            etag = self._s3.put(self._text(), if_match=self._etag)
            if etag is None:
                return False
            self._etag = etag
            return True
        path = filesystem_for(self.uri, self.options)[1]
        # Rename is atomic: a reader never sees a half-written lock (which it would take as stale).
        temporary = f"{path}.{self.run_id}.tmp"
        with open(temporary, "w") as handle:
            handle.write(self._text())
        os.replace(temporary, path)
        return True


# Codes of a conditional write that lost: the object exists (If-None-Match) or changed (If-Match); 409 when two
# conditional writes to one key overlap on AWS.
PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


class S3Object:
    """One small S3 object read and written with ETag conditions, through s3fs (pyarrow's S3 has no conditional
    writes). Transient errors are retried (storage.retry_io); a lost condition is an answer, not an error."""

    def __init__(self, uri: str, options: StorageOptions) -> None:
        import s3fs

        parsed = urlparse(uri)
        self.uri, self.bucket, self.key = uri, parsed.netloc, parsed.path.lstrip("/")
        endpoint = options.resolved_s3_endpoint()
        self.fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})

    def get(self) -> tuple[str | None, str | None]:
        """(text, ETag), or (None, None) when there is no such object."""

        def load() -> tuple[str | None, str | None]:
            try:
                response = self._call("get_object")
            except FileNotFoundError:
                return None, None
            body = _read_body(self.fs, response["Body"])
            return body.decode(), response["ETag"]

        return retry_io(load, f"reading {self.uri}")

    def put(self, text: str, *, if_match: str | None) -> str | None:
        """Write if the object is absent (`if_match` None) or still at version `if_match`; the new ETag, or None
        when the condition failed (another run wrote or created it first)."""
        condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}

        def write() -> str | None:
            try:
                return self._call("put_object", Body=text.encode(), **condition)["ETag"]
            except OSError as error:
                if _precondition_failed(error):
                    return None
                raise

        return retry_io(write, f"writing {self.uri}")

    def delete(self, *, if_match: str | None) -> bool:
        """Delete the object if it is still at version `if_match`; False when it changed."""

        def remove() -> bool:
            try:
                self._call("delete_object", **({"IfMatch": if_match} if if_match else {}))
            except FileNotFoundError:
                return True  # gone already (a retried delete whose first answer was lost)
            except OSError as error:
                if _precondition_failed(error):
                    return False
                raise
            return True

        return retry_io(remove, f"deleting {self.uri}")

    def _call(self, method: str, **kwargs: Any) -> dict:
        from botocore.exceptions import BotoCoreError

        try:
            return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
        except BotoCoreError as error:  # connection refused / timeouts: not OSErrors, but just as transient
            raise OSError(str(error)) from error


def _read_body(fs: Any, body: Any) -> bytes:
    """Read an aiobotocore streaming body on s3fs's event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body as stream:
            return await stream.read()

    return sync(fs.loop, read)


def _precondition_failed(error: OSError) -> bool:
    cause = error.__cause__
    code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", "")) if cause is not None else ""
    return code in PRECONDITION_CODES or "pre-condition" in str(error).lower()
