"""Autoscaling from zero GPU workers with Ray's real autoscaler: `fake_multinode` starts cluster.yaml's node types
(tests/cluster/fake_multinode.yaml) as local processes when a job asks for GPU replicas, and stops them once idle.

Runs inside the loopback-only network namespace like test_multinode.py (tests/cluster/test_in_namespace.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.cluster_jobs import IMAGES, caption_command, finish, output_ids, start_job
from tests.support.loopback_cluster import FAKE_PROVIDER_GCS_PORT, LoopbackCluster

pytestmark = [pytest.mark.netns, pytest.mark.slow]

FAKE_MULTINODE_CONFIG = Path(__file__).with_name("fake_multinode.yaml")
# idle_timeout_minutes 0.1 in the config; the autoscaler looks every second.
RELEASE_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def autoscaling_cluster(seaweedfs) -> LoopbackCluster:
    cluster = LoopbackCluster(env=seaweedfs.env(), port=FAKE_PROVIDER_GCS_PORT)
    try:
        cluster.start(autoscaling_config=FAKE_MULTINODE_CONFIG)
        yield cluster
    finally:
        cluster.stop()


def test_gpu_workers_scale_up_from_zero_for_a_job_and_are_released_when_idle(
    autoscaling_cluster, seaweedfs, s3_bucket, inputs, tiny_models, tmp_path
):
    cluster = autoscaling_cluster
    assert cluster.alive_gpu_nodes() == [], "GPU workers before any job asked for one"
    most_gpu_nodes = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most_gpu_nodes
        while not stop.is_set():
            most_gpu_nodes = max(most_gpu_nodes, len(cluster.alive_gpu_nodes()))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    log = tmp_path / "job.log"
    command = caption_command(cluster, tiny_models["llava"], s3_bucket, replicas=1, files_per_shard=16)
    code, output = finish(start_job(cluster, command, log), log)
    stop.set()
    watcher.join()
    assert code == 0, output[-6000:]
    assert output_ids(seaweedfs.fs(), s3_bucket) == Counter(inputs)
    assert len(inputs) == IMAGES
    # One 1-GPU worker was enough for the one replica: the autoscaler chose gpu-1x-a10g, not the 4-GPU type.
    assert most_gpu_nodes == 1

    deadline = time.monotonic() + RELEASE_TIMEOUT_S
    while cluster.alive_gpu_nodes():
        assert time.monotonic() < deadline, f"the idle GPU worker was not released in {RELEASE_TIMEOUT_S}s"
        time.sleep(1)
    assert [node.get("is_head_node") for node in cluster.alive_nodes()] == [True]
