"""One local Ray shared by the tests that run jobs in-process, as Ray's own `ray_start_regular_shared` does.

A job's `connect()` finds it running and joins it, and the job's `shutdown()` leaves it alone (pipeline.run.
ray_cluster), so each job test saves a Ray start and stop (about 5 s on 2 cores). Its worker processes inherit the
SeaweedFS credentials and endpoint at start, because Ray workers read AWS_* from their own environment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from llava_batch.pipeline.run import ray_cluster

# A job's actor pools are gone shortly after its dataset finished; longer means a failed test left actors behind.
IDLE_WAIT_S = 10.0


class SharedRay:
    def __init__(self) -> None:
        self.running = False

    def ensure(self, env: dict[str, str]) -> None:
        """Running, with every CPU free: a job must never wait for an earlier test's leftover actors. `env` is
        what its worker processes get on top of this process's environment when it starts."""
        import ray

        if self.running and ray.is_initialized() and not self._idle():
            self.stop()
        if not (self.running and ray.is_initialized()):
            with _environment(env):
                ray_cluster.start_local_ray(num_cpus=2)
            self.running = True

    def stop(self) -> None:
        if self.running:
            ray_cluster.shutdown(force=True)
            self.running = False

    def _idle(self) -> bool:
        import ray

        deadline = time.monotonic() + IDLE_WAIT_S
        while time.monotonic() < deadline:
            if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0):
                return True
            time.sleep(0.2)
        return False


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
