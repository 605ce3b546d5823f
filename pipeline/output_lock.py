"""One run per output: a `_lock.json` object in the output location, kept alive by a heartbeat.

Two runs writing one output (two cron ticks, a retry while the first still runs) would race on the same shards
and the manifest. The lock holds its owner (host, pid, run id), when it was taken and a heartbeat that a
background thread refreshes; a lock whose heartbeat is older than the TTL belongs to a dead run and is taken over.

Atomicity: on a local filesystem the lock is created with an exclusive link, so two runs cannot both create
it. S3 (through pyarrow) has no create-if-absent, so there the lock is written, read back after a pause and
kept only if it still names this run; two runs starting within that pause of each other could in principle
both read back their own write on a store without read-after-write consistency. AWS S3 and SeaweedFS are
read-after-write consistent, so the later writer wins and the earlier one sees the other owner and stops.
Heartbeats compare wall clocks of different hosts: keep their skew well below the TTL (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs

from pipeline.storage import StorageOptions, delete_object, filesystem_for, join_uri, retry_io, write_text

logger = logging.getLogger(__name__)

LOCK_FILE = "_lock.json"
HEARTBEAT_S = 30.0
# Three missed heartbeats: a run that is only slow (a long GC pause, a flapping store) keeps its lock.
TTL_S = 3 * HEARTBEAT_S
# How long an S3 writer waits before reading its lock back (see the module docstring).
SETTLE_S = 1.0


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
        settle_s: float = SETTLE_S,
    ) -> None:
        self.uri = join_uri(output_uri, LOCK_FILE)
        self.options = options
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.settle_s = settle_s
        self.run_id = uuid.uuid4().hex[:12]
        self.owner: LockOwner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # 1. Taking the lock -------------------------------------------------------------------------------------
    def acquire(self) -> None:
        current = self.read()
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
        fs, path = filesystem_for(self.uri, self.options)
        if isinstance(fs, pafs.LocalFileSystem):
            self._create_local(path, replace=current is not None)
        else:
            self._write()
            time.sleep(self.settle_s)
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
                self._write()
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
                delete_object(self.uri, self.options)
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
        fs, path = filesystem_for(self.uri, self.options)

        def load() -> str | None:
            try:
                with fs.open_input_stream(path) as stream:
                    return stream.read().decode()
            except FileNotFoundError:
                return None

        text = retry_io(load, f"reading {self.uri}")
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

    def _write(self) -> None:
        fs, path = filesystem_for(self.uri, self.options)
        if isinstance(fs, pafs.LocalFileSystem):
            # Rename is atomic: a reader never sees a half-written lock (which it would take as stale).
            temporary = f"{path}.{self.run_id}.tmp"
            with open(temporary, "w") as handle:
                handle.write(self._text())
            os.replace(temporary, path)
            return
        # An S3 object appears whole or not at all.
        write_text(self.uri, self._text(), self.options)
