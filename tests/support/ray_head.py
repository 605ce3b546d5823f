"""A real Ray head with its dashboard (Job Submission API) on 127.0.0.1, for tests of `llava-batch submit`.

`run_ray_head(num_cpus=2)` starts `ray start --head --block` in its own process group and yields the dashboard
URL. It stops exactly the processes it started (SIGTERM to `ray start`, which stops its node, then the group):
a plain `ray stop` would also stop other Ray instances of the same user on a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from llava_batch.pipeline.run.ray_cluster import LOCAL_RAY_ENV

HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def dashboard_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def run_ray_head(num_cpus: int = 2) -> Iterator[str]:
    scripts = Path(sys.executable).parent
    # Short and absolute: Ray's unix sockets live under it (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="lbray-", dir="/tmp")
    port = free_port()
    url = f"http://{HOST}:{port}"
    env = {**os.environ, **LOCAL_RAY_ENV, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Job drivers run `llava-batch` from the head's PATH: this environment's.
    env["PATH"] = f"{scripts}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(scripts / "ray"),
                "start",
                "--head",
                "--port=0",
                f"--num-cpus={num_cpus}",
                "--include-dashboard=true",
                f"--dashboard-host={HOST}",
                f"--dashboard-port={port}",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
                "--block",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not dashboard_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray head did not start; its output:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` stops its node; whatever is left of its process group gets SIGKILL."""
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
