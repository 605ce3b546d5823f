"""Start a local Ray that is safe on a laptop, or join an existing cluster (`--address` / RAY_ADDRESS)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass

from llava_batch.pipeline.run.stages import NodeResources

logger = logging.getLogger(__name__)

# Ray's worker processes inherit these; they keep a local Ray on loopback and out of the home directory.
LOCAL_RAY_ENV = {
    # Without it Ray listens on every interface even when told 127.0.0.1 (measured on a 2-core machine).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No auth token file written under ~/.ray.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


# Session folders of the local Rays this process started, removed again on shutdown.
_local_temp_dirs: list[str] = []
# Whether connect() started or joined the Ray this process is attached to. A Ray that was already initialized when
# connect() ran (a notebook's, a test session's shared one, a caller's own Ray Data pipeline) is theirs: shutdown()
# leaves it running.
_owned = False


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float
    local: bool
    # Each live node's own CPUs and GPUs: a replica's CPU must come out of its GPU node, not the cluster's total.
    nodes: tuple[NodeResources, ...] = ()
    # The live nodes' IP addresses, and the address of the node this process (the driver) runs on.
    node_addresses: tuple[str, ...] = ()
    driver_address: str = ""

    def other_machines(self) -> list[str]:
        """Addresses of live nodes that are not the driver's machine: their read tasks cannot see its disk."""
        return sorted({address for address in self.node_addresses if address != self.driver_address})

    def node_list(self) -> list[NodeResources]:
        """The nodes, or one node holding everything when they were not listed (a hand-made ClusterResources)."""
        return list(self.nodes) or [NodeResources(self.cpus, self.gpus)]


def connect(address: str | None = None, *, num_cpus: int | None = None) -> ClusterResources:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a private local one."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        for name, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(name, value)
    import ray

    # ray.init replaces the SIGTERM handler (with one that exits mid-iteration and ends in a native abort);
    # the caller's handler (the CLI's: stop like Ctrl-C) is put back afterwards.
    on_sigterm = (
        signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    )
    global _owned
    if ray.is_initialized():
        logger.info("using the Ray this process is already attached to")
    elif address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        _owned = True
    else:
        start_local_ray(num_cpus)
        _owned = True
    if callable(on_sigterm):
        signal.signal(signal.SIGTERM, on_sigterm)
    resources = ray.cluster_resources()
    nodes = ray.nodes()
    return ClusterResources(
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        local=not address,
        nodes=live_nodes(nodes),
        node_addresses=tuple(node["NodeManagerAddress"] for node in nodes if node.get("Alive")),
        driver_address=ray.util.get_node_ip_address(),
    )


def starts_local_ray(address: str | None) -> bool:
    """Whether connect(address) would start a private local Ray (no address, no RAY_ADDRESS, none attached)."""
    import ray

    return not (address or os.environ.get("RAY_ADDRESS")) and not ray.is_initialized()


def live_nodes(nodes: list[dict]) -> tuple[NodeResources, ...]:
    """`ray.nodes()` entries -> the live nodes' resources."""
    return tuple(
        NodeResources(float(node["Resources"].get("CPU", 0)), float(node["Resources"].get("GPU", 0)))
        for node in nodes
        if node.get("Alive") and node.get("Resources")
    )


def remote_address(address: str | None) -> bool:
    """Whether an `--address` names a cluster whose nodes may be other machines (anything but this machine's
    loopback; `auto` joins a cluster whose head runs here, but its workers may not)."""
    if not address:
        return False
    from urllib.parse import urlparse

    host = urlparse(address if "://" in address else f"ray://{address}").hostname or ""
    return host not in ("127.0.0.1", "localhost", "::1")


def local_path_problem(name: str, uri: str | None) -> str | None:
    """The warning for a job on a cluster that reads or writes `uri` on a local disk; None for a store every
    node reaches (s3://, gs://, ...)."""
    from llava_batch.pipeline.io.storage import is_local

    if not uri or not is_local(uri):
        return None
    return (
        f"{name}: {uri!r} is a path on a local disk, but the job runs on a cluster: every node that reads or "
        "writes it must see the same files there (a shared filesystem), or rows fail as missing files; "
        "use s3://bucket/prefix (with --s3-endpoint-url for a non-AWS store) to run on a cluster"
    )


def start_local_ray(num_cpus: int | None = None) -> None:
    """A private Ray on this machine: loopback only, its files in a temporary folder (removed by shutdown)."""
    import ray

    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)
    _keep_node_ip_on_loopback()
    temp_dir = tempfile.mkdtemp(prefix="llava-batch-ray-")
    _local_temp_dirs.append(temp_dir)
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    logger.info("started a local Ray (logs in %s)", temp_dir)


def _keep_node_ip_on_loopback() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when `ray` is first imported; if this process imported
    Ray before connect() set it, the driver would still pick the machine's external address."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in (
        "0",
        "false",
        "False",
    )


def configure_ray_data(show_ray_progress: bool = False) -> None:
    """Our own progress line replaces Ray Data's bars by default; they flood logs of batch jobs."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = show_ray_progress
    context.print_on_execution_start = False
    # Bounded in-flight data: the driver's memory must not grow with the dataset.
    context.execution_options.preserve_order = False


def shutdown(*, force: bool = False) -> None:
    """Stop the Ray that connect() started or joined (any Ray with `force`); a local Ray's files are removed.

    A Ray that was running before connect() was called belongs to the caller and keeps running.
    """
    import ray

    global _owned
    if (_owned or force) and ray.is_initialized():
        ray.shutdown()
    _owned = False
    if ray.is_initialized():
        return
    while _local_temp_dirs:
        shutil.rmtree(_local_temp_dirs.pop(), ignore_errors=True)
