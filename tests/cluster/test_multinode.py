"""A caption job on a real three-node Ray cluster: a CPU head and two workers with one CPU and one (advertised) GPU
each, input and output on S3 (SeaweedFS), every process on 127.0.0.1 inside a loopback-only network namespace.

These tests run only inside that namespace: `tests/cluster/test_in_namespace.py` makes it and runs this module
there (tests/conftest.py deselects them anywhere else). Jobs go through the CLI as a user runs them
(`llava-batch caption --address ...`), each its own driver process, so that a driver can be killed.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from tests.support.cluster_jobs import (
    FILES_PER_SHARD,
    IMAGES,
    caption_command,
    finish,
    output_ids,
    parts,
    start_job,
    wait_for_parts,
)
from tests.support.loopback_cluster import LoopbackCluster, listening_addresses, not_on_loopback

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(seaweedfs) -> LoopbackCluster:
    cluster = LoopbackCluster(env=seaweedfs.env())
    try:
        cluster.start()
        cluster.add_worker()
        cluster.add_worker()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def two_workers(cluster: LoopbackCluster) -> LoopbackCluster:
    """Two live GPU workers, whatever an earlier test killed (a replacement joins, as a spot node's would)."""
    live = {node["node_id"] for node in cluster.alive_nodes()}
    while sum(1 for node in cluster.nodes if node.num_gpus and node.node_id in live) < 2:
        live.add(cluster.add_worker().node_id)
    return cluster


def test_every_ray_port_listens_on_loopback_only(cluster: LoopbackCluster):
    addresses = listening_addresses()
    assert f"127.0.0.1:{cluster.dashboard_port}" in addresses
    assert len(cluster.alive_nodes()) == 3
    assert not_on_loopback(addresses) == [], addresses


def test_replicas_run_on_the_gpu_workers_and_reads_where_the_cpus_are(
    two_workers, seaweedfs, s3_bucket, inputs, tiny_models, tmp_path
):
    cluster = two_workers
    before = {actor["actor_id"] for actor in cluster.state("actors")}
    log = tmp_path / "job.log"
    code, output = finish(
        start_job(cluster, caption_command(cluster, tiny_models["llava"], s3_bucket), log), log
    )
    assert code == 0, output[-6000:]
    assert output_ids(seaweedfs.fs(), s3_bucket) == Counter(inputs)

    actors = [actor for actor in cluster.state("actors") if actor["actor_id"] not in before]
    placed = [
        (actor.get("repr_name") or actor["class_name"], cluster.node_named(actor["node_id"]))
        for actor in actors
    ]
    replicas = sorted(node for name, node in placed if "Generate" in name)
    preprocessing = [node for name, node in placed if "Preprocess" in name]
    # Both replicas started, one on each GPU worker: CPU work that took a GPU worker's only CPU first once left
    # the second replica unplaced (replicas now ask Ray for GPUs only, pipeline.run.stages.CpuShares).
    assert replicas == sorted(node.name for node in cluster.nodes[-2:]), placed
    # Preprocessing and reads ran where CPUs were free: preferably the CPU head, but any node is allowed.
    assert preprocessing and "not placed" not in preprocessing, placed
    reads = [task for task in cluster.state("tasks") if task["name"].startswith("MapBatches(read_shards)")]
    assert reads and all(
        cluster.node_named(task.get("node_id")) in {n.name for n in cluster.nodes} for task in reads
    )
    print("placement:", Counter(placed), Counter(cluster.node_named(task.get("node_id")) for task in reads))


def test_a_worker_node_killed_mid_run_leaves_every_row_exactly_once(
    two_workers, seaweedfs, s3_bucket, inputs, tiny_models, tmp_path
):
    cluster = two_workers
    fs = seaweedfs.fs()
    log = tmp_path / "job.log"
    job = start_job(cluster, caption_command(cluster, tiny_models["llava"], s3_bucket), log)
    committed_at_kill = wait_for_parts(fs, s3_bucket, job, log)
    victim = cluster.nodes[-1]
    victim.kill()
    killed_at = time.monotonic()
    assert committed_at_kill < IMAGES // FILES_PER_SHARD, "the run had finished before the kill"
    code, output = finish(job, log)
    print(
        f"killed {victim.name} after {committed_at_kill} part(s); the run ended {time.monotonic() - killed_at:.0f}s later with {code}"
    )
    print(output[-3000:])
    assert code == 0, output[-6000:]
    assert output_ids(fs, s3_bucket) == Counter(inputs)


def test_the_driver_killed_and_re_run_against_the_same_cluster_leaves_every_row_exactly_once(
    two_workers, seaweedfs, s3_bucket, inputs, tiny_models, tmp_path
):
    cluster = two_workers
    fs = seaweedfs.fs()
    command = caption_command(cluster, tiny_models["llava"], s3_bucket)
    first = start_job(cluster, command, tmp_path / "first.log")
    committed_at_kill = wait_for_parts(fs, s3_bucket, first, tmp_path / "first.log")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    kept = len(parts(fs, s3_bucket))
    assert committed_at_kill <= kept < IMAGES // FILES_PER_SHARD, "the run had finished before the kill"

    code, output = finish(start_job(cluster, command, tmp_path / "second.log"), tmp_path / "second.log")
    assert code == 0, output[-6000:]
    # The lock of the killed driver (a process gone from this host) is taken over at once, its parts kept.
    assert "taking over the lock of a dead run" in output
    assert f"already committed {kept} shard(s)" in output
    assert output_ids(fs, s3_bucket) == Counter(inputs)
