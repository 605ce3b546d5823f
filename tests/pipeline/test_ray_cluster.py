"""A local Ray started by the tool keeps every socket on loopback and its files in a temporary folder."""

import ipaddress
import os

import psutil
import pytest

from llava_batch.pipeline.run.ray_cluster import connect, shutdown

pytestmark = pytest.mark.integration


def listening_addresses(pids: set[int]) -> set[str]:
    addresses = set()
    for connection in psutil.net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in pids:
            addresses.add(connection.laddr.ip)
    return addresses


def is_loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback
    return (mapped or parsed).is_loopback


def ray_process_ids() -> set[int]:
    own = os.getpid()
    found = {own}
    for process in psutil.Process(own).children(recursive=True):
        found.add(process.pid)
    return found


def test_local_ray_listens_on_loopback_only(monkeypatch, own_ray):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    resources = connect(None, num_cpus=2)
    try:
        assert resources.local and resources.cpus == 2
        addresses = listening_addresses(ray_process_ids())
        assert addresses, "expected Ray to listen somewhere"
        assert all(is_loopback(address) for address in addresses), f"Ray listens on {addresses}"
    finally:
        shutdown()
    import ray

    assert not ray.is_initialized()
