import functools

import pytest

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.run.stages import (
    READ_CPUS,
    CpuShares,
    NodeResources,
    fit_cpu_shares,
    plan_cpu_shares,
    reads_always_fit,
)


@pytest.mark.parametrize(
    ("cpus", "workers", "replicas"), [(2, 1, 1), (2, 2, 1), (2, 1, 2), (4, 3, 1), (1, 1, 1)]
)
def test_full_cpu_pools_always_leave_room_for_a_read_task(cpus, workers, replicas):
    shares = fit_cpu_shares(cpus, workers, replicas, gpu_replicas=False)
    assert workers * shares.preprocess + replicas * shares.generate + shares.read <= cpus + 1e-9
    assert shares.read == READ_CPUS


def test_roomy_cluster_gives_whole_cpus():
    shares = fit_cpu_shares(64, 4, 2, gpu_replicas=False)
    assert (shares.preprocess, shares.generate) == (1.0, 1.0)


def test_gpu_replicas_keep_one_cpu_each():
    shares = fit_cpu_shares(2, 2, 8, gpu_replicas=True)
    assert shares.generate == 1.0 and 2 * shares.preprocess + READ_CPUS <= 2


# Per-node plans (llava_batch.pipeline.run.stages.plan_cpu_shares) over hand-written clusters.
HEAD_AND_TWO_GPU_WORKERS = [NodeResources(2, 0), NodeResources(1, 1), NodeResources(1, 1)]


def test_head_plus_one_cpu_gpu_workers_keeps_the_head_for_preprocessing_and_reads():
    shares = plan_cpu_shares(
        HEAD_AND_TWO_GPU_WORKERS, preprocess_workers=2, max_replicas=2, gpus_per_replica=1
    )
    # Each replica takes its GPU worker's one CPU; the two preprocess actors share the head with a read task.
    assert shares == CpuShares(read=READ_CPUS, preprocess=0.875, generate=1.0)
    assert reads_always_fit([2, 0, 0], shares.preprocess, 2, READ_CPUS)
    # The old plan over the cluster's total (4 CPUs) gave 1 CPU per preprocess actor: the head full, reads starved.
    assert not reads_always_fit([2, 0, 0], 1.0, 2, READ_CPUS)


def test_gpu_replicas_ask_ray_for_gpus_only_so_cpu_work_can_never_block_their_placement():
    shares = plan_cpu_shares(
        HEAD_AND_TWO_GPU_WORKERS, preprocess_workers=2, max_replicas=2, gpus_per_replica=1
    )
    assert shares.replica_request(1) == 0.0
    assert shares.replica_request(2) == 0.0
    # CPU replicas are CPU work: they ask for their share.
    cpu = plan_cpu_shares([NodeResources(2, 0)], preprocess_workers=1, max_replicas=1, gpus_per_replica=0)
    assert cpu.replica_request(0) == cpu.generate == 0.875


def test_one_cpu_node_without_gpus_runs_cpu_replicas_beside_reads():
    shares = plan_cpu_shares([NodeResources(2, 0)], preprocess_workers=1, max_replicas=1, gpus_per_replica=0)
    assert shares == CpuShares(read=READ_CPUS, preprocess=0.875, generate=0.875)
    assert 2 * 0.875 + READ_CPUS <= 2


def test_eight_gpu_nodes_of_eight_cpus_give_up_some_replica_cpu_for_preprocessing():
    nodes = [NodeResources(8, 8)] * 8
    shares = plan_cpu_shares(nodes, preprocess_workers=16, max_replicas=64, gpus_per_replica=1)
    # 64 replicas at 1 CPU would take all 64 CPUs: the replicas step down to 0.75, leaving 2 CPUs a node.
    assert shares.generate == 0.75
    assert shares.preprocess == 0.875
    assert reads_always_fit([8 - 8 * 0.75] * 8, shares.preprocess, 16, READ_CPUS)


def test_gpu_nodes_with_fewer_replicas_than_gpus_keep_whole_cpus():
    nodes = [NodeResources(8, 8)] * 8
    shares = plan_cpu_shares(nodes, preprocess_workers=8, max_replicas=4, gpus_per_replica=1)
    assert shares == CpuShares(read=READ_CPUS, preprocess=1.0, generate=1.0)


def test_a_replica_of_two_gpus_on_a_node_with_fewer_cpus_than_replicas():
    nodes = [NodeResources(4, 0), NodeResources(1, 4)]
    shares = plan_cpu_shares(nodes, preprocess_workers=2, max_replicas=2, gpus_per_replica=2)
    assert shares.generate == 0.5  # two replicas share the GPU node's one CPU
    assert shares.preprocess == 1.0


def test_gpu_nodes_not_up_yet_plan_the_replicas_a_whole_cpu():
    # An autoscaling cluster before its GPU workers start: only the head is listed.
    shares = plan_cpu_shares([NodeResources(4, 0)], preprocess_workers=3, max_replicas=8, gpus_per_replica=1)
    assert shares == CpuShares(read=READ_CPUS, preprocess=1.0, generate=1.0)
    assert reads_always_fit([4], 1.0, 3, READ_CPUS)


def test_a_cluster_with_no_cpu_left_for_reading_is_refused_with_a_config_error():
    with pytest.raises(ConfigError, match=r"^cluster: its nodes \(0 CPU/1 GPU\) leave no CPU"):
        plan_cpu_shares([NodeResources(0, 1)], preprocess_workers=1, max_replicas=1, gpus_per_replica=1)


@pytest.mark.parametrize(
    "nodes",
    [
        HEAD_AND_TWO_GPU_WORKERS,
        [NodeResources(2, 0)],
        [NodeResources(8, 8)] * 8,
        [NodeResources(1.2, 0), NodeResources(1.2, 0)],
        [NodeResources(16, 0), NodeResources(4, 1), NodeResources(4, 1), NodeResources(4, 1)],
    ],
)
@pytest.mark.parametrize(("workers", "replicas", "gpus"), [(1, 1, 0), (4, 2, 0), (2, 8, 1), (8, 3, 1)])
def test_every_placement_of_the_planned_actors_leaves_a_read_task_room(nodes, workers, replicas, gpus):
    """Place the actors in every order Ray could (each actor on any node it fits) and check a read still fits."""
    shares = plan_cpu_shares(nodes, workers, replicas, gpus)
    free = [node.cpus for node in nodes]
    gpu_free = [node.gpus for node in nodes]
    actors = [("cpu", shares.preprocess)] * workers
    if gpus:
        placed = 0
        for index in range(len(nodes)):  # replicas first: their GPUs decide where they go
            while placed < replicas and gpu_free[index] >= gpus and free[index] + 1e-9 >= shares.generate:
                gpu_free[index] -= gpus
                free[index] -= shares.generate
                placed += 1
    else:
        actors += [("cpu", shares.generate)] * replicas

    @functools.cache
    def starve(free: tuple[float, ...], left: int) -> bool:
        if not left:
            return all(cpus + 1e-9 < READ_CPUS for cpus in free)
        return any(
            starve(tuple(sorted([*free[:i], round(cpus - shares.preprocess, 6), *free[i + 1 :]])), left - 1)
            for i, cpus in enumerate(free)
            if cpus + 1e-9 >= shares.preprocess
        )

    assert len(actors) <= sum(int(cpus // shares.preprocess + 1e-9) for cpus in free)  # they all fit
    assert not starve(tuple(sorted(round(cpus, 6) for cpus in free)), len(actors))


def test_live_nodes_reads_each_live_node_from_ray_nodes():
    from llava_batch.pipeline.run.ray_cluster import ClusterResources, live_nodes

    listed = [
        {"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}},
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}},
    ]
    nodes = live_nodes(listed)
    assert nodes == (NodeResources(2.0, 0.0), NodeResources(1.0, 1.0))
    assert ClusterResources(3, 1, False, nodes).node_list() == list(nodes)
    assert ClusterResources(3, 1, False).node_list() == [NodeResources(3, 1)]


def test_scale_up_limits_are_the_planned_gpu_pools_and_the_cpus_up_at_the_start():
    from llava_batch.pipeline.run.stages import Stage, scale_up_limits

    class Pool:
        pass

    stages = [
        Stage("read", print, num_cpus=0.25),
        Stage("preprocess", Pool, num_cpus=0.75, pool=(1, 4)),
        Stage("generate", Pool, num_cpus=0.0, num_gpus=2, pool=(1, 3)),
        Stage("generate-turn1", Pool, num_cpus=0.0, num_gpus=1, pool=(2, 2)),
    ]
    assert scale_up_limits(stages, cluster_cpus=8.0) == (8.0, 8.0)
    assert scale_up_limits(stages[:2], cluster_cpus=2.0) == (2.0, 0.0)
