"""Running caption jobs on a test cluster as a user does (`llava-batch caption --address ...`, each job its own driver
process, so that it can be killed), and reading what they committed on S3."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.loopback_cluster import LoopbackCluster

IMAGES = 96
FILES_PER_SHARD = 4
JOB_TIMEOUT_S = 420


def caption_command(
    cluster: LoopbackCluster,
    model: Path,
    bucket: str,
    *,
    replicas: int = 2,
    files_per_shard: int = FILES_PER_SHARD,
) -> list[str]:
    return [
        str(Path(sys.executable).parent / "llava-batch"), "caption",
        "--address", cluster.address,
        "--model", str(model),
        "--input", f"s3://{bucket}/images/",
        "--output", f"s3://{bucket}/captions/",
        "--files-per-shard", str(files_per_shard),
        "--replicas", str(replicas),
        "--gpus-per-replica", "1",
        "--batch-size", "4",
        "--max-new-tokens", "12",
        "--dtype", "float32",
    ]  # fmt: skip


def start_job(cluster: LoopbackCluster, command: list[str], log: Path) -> subprocess.Popen:
    env = cluster.process_env()
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(job: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        code = job.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"the job did not finish in {JOB_TIMEOUT_S}s; its output:\n{log.read_text()[-6000:]}")
    return code, log.read_text()


def parts(fs, bucket: str) -> list[str]:
    return sorted(
        path
        for path in fs.ls(f"{bucket}/captions", refresh=True)
        if path.rsplit("/", 1)[-1].startswith("part-")
    )


def wait_for_parts(fs, bucket: str, job: subprocess.Popen, log: Path, count: int = 1) -> int:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if fs.exists(f"{bucket}/captions"):
            found = len(parts(fs, bucket))
            if found >= count:
                return found
        if job.poll() is not None:
            pytest.fail(f"the job ended before {count} committed part(s):\n{log.read_text()[-6000:]}")
        time.sleep(0.1)
    pytest.fail(f"no committed part after {JOB_TIMEOUT_S}s:\n{log.read_text()[-6000:]}")


def output_ids(fs, bucket: str) -> Counter:
    ids: Counter = Counter()
    for path in parts(fs, bucket):
        with fs.open(path, "rb") as handle:
            table = pq.read_table(io.BytesIO(handle.read()), columns=["id", "error"])
        ids.update(table.column("id").to_pylist())
        errors = [error for error in table.column("error").to_pylist() if error]
        assert not errors, f"{path}: {errors[:3]}"
    return ids
