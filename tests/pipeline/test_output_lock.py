"""The output lock: acquired, refused while held (naming the owner), stale taken over, released; local and S3."""

import json
import logging
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from llava_batch.pipeline.io.storage import StorageOptions
from llava_batch.pipeline.run.output_lock import LOCK_FILE, OutputLock, OutputLocked

LOCAL = StorageOptions()


def write_lock(path, *, heartbeat_age_s: float, run_id: str = "deadbeef0001", pid: int = 4242) -> None:
    beat = datetime.now(timezone.utc) - timedelta(seconds=heartbeat_age_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "host": "worker-7",
                "pid": pid,
                "run_id": run_id,
                "acquired_at": (beat - timedelta(hours=1)).isoformat(),
                "heartbeat_at": beat.isoformat(),
            }
        )
    )


def test_acquire_writes_the_owner_and_release_removes_it(tmp_path):
    lock = OutputLock(str(tmp_path / "out"), LOCAL)
    with lock:
        content = json.loads((tmp_path / "out" / LOCK_FILE).read_text())
        assert content["run_id"] == lock.run_id and content["pid"] == os.getpid()
        assert content["host"] == socket.gethostname()
        assert content["acquired_at"] == content["heartbeat_at"]
    assert not (tmp_path / "out" / LOCK_FILE).exists()
    assert sorted(os.listdir(tmp_path / "out")) == []  # no temporary files left behind


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    with OutputLock(str(tmp_path), LOCAL) as first:
        second = OutputLock(str(tmp_path), LOCAL)
        with pytest.raises(
            OutputLocked, match=rf"locked by run {first.run_id} \(host {socket.gethostname()}, pid "
        ):
            second.acquire()
        # The refused run must not have touched the holder's lock.
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == first.run_id
    # Once released, the next run gets it.
    with OutputLock(str(tmp_path), LOCAL) as third:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == third.run_id


def test_the_heartbeat_keeps_a_long_run_alive(tmp_path):
    with OutputLock(str(tmp_path), LOCAL, heartbeat_s=0.1, ttl_s=0.5) as holder:
        first_beat = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat_at"]
        time.sleep(1.0)  # twice the TTL: without heartbeats the lock would now be stale
        content = json.loads((tmp_path / LOCK_FILE).read_text())
        assert content["run_id"] == holder.run_id and content["heartbeat_at"] > first_beat
        with pytest.raises(OutputLocked):
            OutputLock(str(tmp_path), LOCAL, heartbeat_s=0.1, ttl_s=0.5).acquire()


def test_a_stale_lock_of_a_dead_run_is_taken_over_and_logged(tmp_path, caplog):
    write_lock(tmp_path / LOCK_FILE, heartbeat_age_s=600)
    caplog.set_level(logging.WARNING, logger="llava_batch.pipeline.run.output_lock")
    with OutputLock(str(tmp_path), LOCAL, ttl_s=90) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == lock.run_id
    assert "taking over a stale lock: run deadbeef0001 (host worker-7, pid 4242" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_fresh_lock_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer exists
    write_lock(tmp_path / LOCK_FILE, heartbeat_age_s=1, pid=dead.pid)
    content = json.loads((tmp_path / LOCK_FILE).read_text())
    (tmp_path / LOCK_FILE).write_text(json.dumps({**content, "host": socket.gethostname()}))
    caplog.set_level(logging.WARNING, logger="llava_batch.pipeline.run.output_lock")
    with OutputLock(str(tmp_path), LOCAL, ttl_s=90) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == lock.run_id
    assert (
        f"taking over the lock of a dead run: run deadbeef0001 (host {socket.gethostname()}, pid {dead.pid}"
        in (caplog.text)
    )


def test_a_fresh_lock_of_another_host_is_respected(tmp_path):
    write_lock(tmp_path / LOCK_FILE, heartbeat_age_s=10)
    with pytest.raises(OutputLocked, match=r"run deadbeef0001 \(host worker-7, pid 4242.*heartbeat 10s ago"):
        OutputLock(str(tmp_path), LOCAL, ttl_s=90).acquire()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), OutputLock(str(tmp_path), LOCAL):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_FILE).exists()


def test_release_leaves_a_lock_that_another_run_took_over(tmp_path):
    lock = OutputLock(str(tmp_path), LOCAL, heartbeat_s=60)
    lock.acquire()
    write_lock(tmp_path / LOCK_FILE, heartbeat_age_s=0, run_id="other0000001")
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "other0000001"


@pytest.mark.integration
def test_lock_on_s3(seaweedfs, s3_bucket, monkeypatch):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    output = f"s3://{s3_bucket}/captions"
    fs = seaweedfs.fs()
    options = StorageOptions()
    with OutputLock(output, options) as first:
        assert json.loads(fs.cat(f"{s3_bucket}/captions/{LOCK_FILE}"))["run_id"] == first.run_id
        with pytest.raises(OutputLocked, match=f"locked by run {first.run_id}"):
            OutputLock(output, options).acquire()
    fs.invalidate_cache()
    # Released without a trace: no zero-byte `captions/` marker left for listings to trip over.
    assert fs.find(s3_bucket, withdirs=True) == []

    # A dead run's lock on S3 is taken over.
    stale = datetime.now(timezone.utc) - timedelta(minutes=10)
    fs.pipe(
        f"{s3_bucket}/captions/{LOCK_FILE}",
        json.dumps(
            {
                "host": "h",
                "pid": 1,
                "run_id": "dead",
                "acquired_at": stale.isoformat(),
                "heartbeat_at": stale.isoformat(),
            }
        ).encode(),
    )
    fs.invalidate_cache()
    with OutputLock(output, options) as taker:
        assert json.loads(fs.cat(f"{s3_bucket}/captions/{LOCK_FILE}"))["run_id"] == taker.run_id
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/captions/{LOCK_FILE}")


@pytest.mark.integration
def test_release_waits_out_a_short_store_outage_on_s3(seaweedfs, s3_bucket, monkeypatch):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    lock = OutputLock(f"s3://{s3_bucket}/captions", StorageOptions())
    lock.acquire()
    restart = seaweedfs.restart_after(2)  # the store is down when the run ends
    lock.release()  # retried until the store is back; a failure here would fail a finished run
    restart.join(timeout=60)
    fs = seaweedfs.fs()
    fs.invalidate_cache()
    assert fs.find(s3_bucket, withdirs=True) == []


@pytest.mark.integration
def test_eight_concurrent_takers_on_s3_exactly_one_wins(seaweedfs, s3_bucket, monkeypatch):
    """Conditional writes (If-None-Match on create, If-Match on a takeover): of 8 runs that try at once, for a
    fresh lock and for a stale one, exactly one holds it and 7 are refused."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    output, fs = f"s3://{s3_bucket}/captions", seaweedfs.fs()
    for round_ in ("fresh", "stale"):
        locks = [OutputLock(output, StorageOptions(), heartbeat_s=60) for _ in range(8)]
        barrier = Barrier(len(locks))

        def take(lock: OutputLock, barrier: Barrier = barrier) -> str:
            barrier.wait()
            try:
                lock.acquire()
            except OutputLocked:
                return "refused"
            return "won"

        with ThreadPoolExecutor(len(locks)) as pool:
            outcomes = list(pool.map(take, locks))
        assert sorted(outcomes) == ["refused"] * 7 + ["won"], round_
        winner = locks[outcomes.index("won")]
        fs.invalidate_cache()
        assert json.loads(fs.cat(f"{s3_bucket}/captions/{LOCK_FILE}"))["run_id"] == winner.run_id
        winner.release()
        fs.invalidate_cache()
        assert not fs.exists(f"{s3_bucket}/captions/{LOCK_FILE}")
        # The next round races for a stale lock left by a dead run.
        write_stale_s3_lock(fs, f"{s3_bucket}/captions/{LOCK_FILE}")


@pytest.mark.integration
def test_s3_heartbeat_and_release_leave_a_lock_another_run_replaced(seaweedfs, s3_bucket, monkeypatch):
    """If-Match on the heartbeat and the release: once another run rewrote the lock, this run's heartbeat stops
    and its release does not delete the other run's lock."""
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    key, fs = f"{s3_bucket}/captions/{LOCK_FILE}", seaweedfs.fs()
    lock = OutputLock(f"s3://{s3_bucket}/captions", StorageOptions(), heartbeat_s=0.2)
    lock.acquire()
    fs.pipe(key, json.dumps({**json.loads(fs.cat(key)), "run_id": "other0000001"}).encode())
    time.sleep(0.6)  # heartbeats would have overwritten it if they wrote unconditionally
    fs.invalidate_cache()
    assert json.loads(fs.cat(key))["run_id"] == "other0000001"
    lock.release()
    fs.invalidate_cache()
    assert json.loads(fs.cat(key))["run_id"] == "other0000001"


def write_stale_s3_lock(fs, key: str) -> None:
    stale = datetime.now(timezone.utc) - timedelta(minutes=10)
    fs.pipe(
        key,
        json.dumps(
            {
                "host": "h",
                "pid": 1,
                "run_id": "dead",
                "acquired_at": stale.isoformat(),
                "heartbeat_at": stale.isoformat(),
            }
        ).encode(),
    )


@pytest.mark.integration
def test_a_takeover_overtaken_between_its_read_and_its_write_is_refused_on_s3(
    seaweedfs, s3_bucket, monkeypatch
):
    """Run A reads a stale lock; before A writes, run B takes it over. A write-then-read-back lock let A overwrite
    B and both went on; with If-Match on the stale version A's write fails and A is refused."""
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    output, key, fs = f"s3://{s3_bucket}/captions", f"{s3_bucket}/captions/{LOCK_FILE}", seaweedfs.fs()
    write_stale_s3_lock(fs, key)
    other = OutputLock(output, StorageOptions(), heartbeat_s=60)

    class Overtaken(OutputLock):
        def heartbeat_age(self, owner):  # called between reading the lock and writing it
            age = super().heartbeat_age(owner)
            if not other.owner:
                other.acquire()
            return age

    with pytest.raises(OutputLocked, match=f"locked by run {other.run_id}"):
        Overtaken(output, StorageOptions(), heartbeat_s=60).acquire()
    fs.invalidate_cache()
    assert json.loads(fs.cat(key))["run_id"] == other.run_id
    other.release()
