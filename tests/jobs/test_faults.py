"""Faults the pipeline survives with nothing lost and nothing duplicated: the object store going away for 15 s,
a model replica's process killed mid-run. Each test checks the output ids, not only the exit code."""

import io
import os
import signal
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from tests.support.images import image_bytes

# Minutes each (an outage, killed processes): the slow tier (`make test-slow`), which CI runs after `make test`.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = 30


def upload(fs, bucket: str) -> list[str]:
    names = [f"img-{index:03d}.png" for index in range(IMAGES)]
    for index, name in enumerate(names):
        fs.pipe(f"{bucket}/images/{name}", image_bytes(index, (40 + index, 30)))
    return names


def s3_ids(fs, bucket: str) -> list[str]:
    fs.invalidate_cache()
    ids = []
    for name in fs.find(f"{bucket}/captions"):
        if name.rsplit("/", 1)[-1].startswith("part-"):
            ids.extend(pq.read_table(io.BytesIO(fs.cat(name))).column("id").to_pylist())
    return ids


def when(condition, action, timeout: float = 240) -> threading.Thread:
    """Run `action` in the background as soon as `condition()` holds."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def argv_for(bucket: str, model: str) -> list[str]:
    return [
        "caption", "--input", f"s3://{bucket}/images/", "--output", f"s3://{bucket}/captions/", "--model", model,
        "--max-new-tokens", "12", "--batch-size", "2", "--files-per-shard", "2",
    ]  # fmt: skip


def test_object_store_away_for_15_seconds(seaweedfs, s3_bucket, tiny_models, monkeypatch):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    fs = seaweedfs.fs()
    names = upload(fs, s3_bucket)
    outage = {}

    def first_part_committed() -> bool:
        try:
            return bool(s3_ids(fs, s3_bucket))
        except (FileNotFoundError, OSError):
            return False

    def outage_of_15s() -> None:
        outage["stopped_at_parts"] = len(s3_ids(fs, s3_bucket))
        outage["thread"] = seaweedfs.restart_after(15)

    watcher = when(first_part_committed, outage_of_15s)
    started = time.monotonic()
    assert main(argv_for(s3_bucket, str(tiny_models["llava"]))) == 0
    watcher.join(timeout=5)
    outage["thread"].join()
    assert outage["stopped_at_parts"] < IMAGES, "the outage must hit mid-run"
    assert time.monotonic() - started > 15
    ids = s3_ids(seaweedfs.fs(), s3_bucket)
    assert sorted(ids) == names, "every image exactly once"


def generate_actor_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "MapWorker" in cmdline and "Generate" in cmdline:
            found.append(process)
    return found


def test_model_replica_killed_mid_run(tmp_path, tiny_models):
    source, output = tmp_path / "images", tmp_path / "captions"
    source.mkdir()
    names = [f"img-{index:03d}.png" for index in range(IMAGES)]
    for index, name in enumerate(names):
        (source / name).write_bytes(image_bytes(index, (40 + index, 30)))
    killed = []

    def kill_a_replica() -> None:
        for process in generate_actor_processes():
            os.kill(process.pid, signal.SIGKILL)
            killed.append(process.pid)

    watcher = when(lambda: output.exists() and any(output.glob("part-*.parquet")), kill_a_replica)
    argv = [
        "caption", "--input", str(source), "--output", str(output), "--model", str(tiny_models["llava"]),
        "--max-new-tokens", "12", "--batch-size", "2", "--files-per-shard", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    watcher.join(timeout=5)
    assert killed, "a generation actor should have been found and killed"
    ids = pq.read_table(output).column("id").to_pylist()
    assert sorted(ids) == names


def test_driver_killed_while_the_store_flaps_then_resumed(seaweedfs, s3_bucket, tiny_models, monkeypatch):
    from tests.jobs.test_resume import caption_argv, run_and_kill

    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    fs = seaweedfs.fs()
    names = upload(fs, s3_bucket)
    argv = caption_argv(f"s3://{s3_bucket}/images/", f"s3://{s3_bucket}/captions/", str(tiny_models["llava"]))
    flaps = []

    def committed_parts() -> int:
        try:
            return len(s3_ids(fs, s3_bucket))
        except Exception:  # noqa: BLE001 - before the first commit the prefix does not exist yet
            return 0

    def store_goes_away() -> None:  # the driver is killed during the outage
        flaps.append(seaweedfs.restart_after(6))
        time.sleep(1)

    run_and_kill(argv, committed_parts, dict(os.environ), before_kill=store_goes_away)
    flaps[0].join()
    assert main(argv) == 0
    ids = s3_ids(seaweedfs.fs(), s3_bucket)
    assert sorted(ids) == names and len(ids) == len(set(ids))
