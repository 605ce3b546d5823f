"""A real multi-node Ray cluster on 127.0.0.1: a head and worker nodes, each its own `ray start --block` in its own
process group, for tests of placement, node loss and driver loss.

Several Ray nodes on one machine must talk over loopback only, and Ray gives no way to say so: with
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` a second node cannot join, and without it Ray swaps 127.0.0.1 for the
machine's own interface address. So the cluster only ever runs inside a private network namespace that holds
nothing but loopback (`in_loopback_only_namespace`); `tests/cluster/test_in_namespace.py` makes one and runs the
multi-node tests there. Stopping touches only the process groups started here (never `ray stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
# Loopback as `ss` prints it: IPv4, and IPv4-mapped on dual-stack sockets (Ray's gRPC servers).
LOOPBACK_LISTEN = re.compile(r"^(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):\d+$")
# Marks the pytest process that runs inside the namespace (set by tests/cluster/test_in_namespace.py).
NAMESPACE_ENV = "LLAVA_BATCH_TEST_NETNS"
# Ray's fake_multinode provider joins the nodes it starts to <this machine's address>:6379, whatever the head's port
# (free inside a private network namespace, whose ports are its own).
FAKE_PROVIDER_GCS_PORT = 6379
# A killed node is declared dead after period x threshold of failed health checks (Ray's defaults: 3 s x 5).
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def in_loopback_only_namespace() -> str | None:
    """None when this process's network holds only a live loopback with 127.0.0.1; else why not."""
    # /proc/self/net follows this process's namespace (/sys/class/net shows the one sysfs was mounted in).
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    interfaces = sorted(line.split(":", 1)[0].strip() for line in lines)
    if interfaces != ["lo"]:
        return f"network interfaces {interfaces}: not a loopback-only namespace (run it under `unshare -n`)"
    addresses = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    )
    if " 127.0.0.1/8 " not in addresses.stdout:
        return f"loopback is not up with 127.0.0.1 (`ip link set lo up`): {addresses.stdout.strip()!r}"
    return None


def listening_addresses() -> list[str]:
    """Every TCP listening socket of this namespace, `addr:port` as `ss` prints it."""
    output = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in output.splitlines() if line.strip()]


def not_on_loopback(addresses: list[str]) -> list[str]:
    return [address for address in addresses if not LOOPBACK_LISTEN.match(address)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    log: Path
    num_cpus: int
    num_gpus: int
    node_id: str = ""

    def kill(self) -> None:
        """SIGKILL to the node's whole process group: its raylet, object store and workers die at once, as when
        a spot instance is taken away."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM to `ray start --block` stops its node; whatever is left of the group gets SIGKILL."""
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        self.kill()


@dataclass
class LoopbackCluster:
    """`start()` the head, `add_worker()` nodes one at a time (each joins before the next starts), `stop()`."""

    env: dict[str, str] = field(default_factory=dict)
    head_cpus: int = 1
    port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lbmn-", dir="/tmp")))
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def process_env(self) -> dict[str, str]:
        scripts = str(Path(sys.executable).parent)
        env = {**os.environ, **self.env, **FAST_HEALTH_CHECKS}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1")
        env["PATH"] = f"{scripts}{os.pathsep}{env.get('PATH', '')}"
        # The single-node safety switch (pipeline.run.ray_cluster.LOCAL_RAY_ENV) refuses a second node; here the
        # namespace is what keeps the traffic on loopback.
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        env.pop("RAY_ADDRESS", None)
        return env

    def start(self, autoscaling_config: Path | None = None) -> None:
        """The head; with `autoscaling_config` (a `fake_multinode` provider config) it also runs Ray's autoscaler,
        which starts and stops worker nodes as local processes."""
        arguments = [
            "--head",
            f"--port={self.port}",
            f"--num-cpus={self.head_cpus}",
            "--num-gpus=0",
            "--include-dashboard=true",
            f"--dashboard-host={HOST}",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp_dir}",
        ]
        if autoscaling_config is not None:
            if self.port != FAKE_PROVIDER_GCS_PORT:
                raise ValueError(
                    f"the fake_multinode provider starts nodes against port {FAKE_PROVIDER_GCS_PORT}"
                )
            arguments.append(f"--autoscaling-config={autoscaling_config}")
            self.env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        self._launch("head", arguments, self.head_cpus, 0)

    def add_worker(self, num_cpus: int = 1, num_gpus: int = 1) -> RayNode:
        name = f"worker{len(self.nodes)}"
        return self._launch(
            name,
            [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}"],
            num_cpus,
            num_gpus,
        )

    def _launch(self, name: str, arguments: list[str], num_cpus: int, num_gpus: int) -> RayNode:
        known = {node["node_id"] for node in self.alive_nodes()} if self.nodes else set()
        log = self.temp_dir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "ray"),
                    "start",
                    f"--node-ip-address={HOST}",
                    "--disable-usage-stats",
                    "--block",
                    *arguments,
                ],  # fmt: skip
                env=self.process_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node = RayNode(name, process, log, num_cpus, num_gpus)
        self.nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Ray node {name} did not join; its output:\n{log.read_text()[-4000:]}")
            new = [entry for entry in self.alive_nodes() if entry["node_id"] not in known]
            if new:
                node.node_id = new[0]["node_id"]
                return node
            time.sleep(0.5)

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes from the dashboard's state API; [] while it does not answer yet."""
        return [node for node in self.state("nodes") if node.get("state") == "ALIVE"]

    def state(self, resource: str, **filters: str) -> list[dict]:
        """`GET /api/v0/<resource>` (nodes, actors, tasks) with detail; [] while the dashboard does not answer."""
        query = "&".join(
            ["detail=1", "limit=10000", *(f"filter_keys={k}&filter_predicates=%3D&filter_values={v}" for k, v in filters.items())]
        )  # fmt: skip
        try:
            with urllib.request.urlopen(
                f"{self.dashboard_url}/api/v0/{resource}?{query}", timeout=10
            ) as response:
                body = json.load(response)
        except OSError:
            return []
        return body.get("data", {}).get("result", {}).get("result", []) or []

    def alive_gpu_nodes(self) -> list[dict]:
        return [node for node in self.alive_nodes() if node.get("resources_total", {}).get("GPU", 0) > 0]

    def node_named(self, node_id: str | None) -> str:
        if not node_id:
            return "not placed"
        return next(
            (node.name for node in self.nodes if node.node_id == node_id), f"unknown node {node_id[:8]}"
        )

    def wait_node_dead(self, node: RayNode, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(entry["node_id"] == node.node_id for entry in self.alive_nodes()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} still alive {timeout_s:.0f}s after it was killed")
            time.sleep(0.5)

    def stop(self) -> None:
        # Workers first, so that they do not spend their shutdown retrying a head that is gone.
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
