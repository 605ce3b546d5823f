import pytest

from llava_batch.pipeline.run.stages import READ_CPUS, fit_cpu_shares


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
