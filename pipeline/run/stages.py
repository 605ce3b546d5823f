"""Turn a job's list of stages into Ray Data operators with their resources.

Operators know nothing about Ray; a `Stage` says how one runs (task or actor pool, CPUs, GPUs, batch size).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One step of a job. `fn` is an operator: a function (stateless, run as tasks) or a class (an actor pool).

    For a class, `pool` is the (min, max) number of actors; Ray Data autoscales within it.
    """

    name: str
    fn: Callable[..., Any] | type
    batch_size: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    pool: tuple[int, int] = (1, 1)
    fn_kwargs: dict[str, Any] = field(default_factory=dict)
    constructor_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_actor(self) -> bool:
        return isinstance(self.fn, type)


def apply_stages(dataset: Any, stages: list[Stage]) -> Any:
    """Chain `map_batches` calls in order; numpy batches so every operator sees `dict[str, np.ndarray]`."""
    import ray.data

    for stage in stages:
        options: dict[str, Any] = {
            "batch_size": stage.batch_size,
            "batch_format": "numpy",
            "zero_copy_batch": False,
            "num_cpus": stage.num_cpus,
        }
        if stage.num_gpus:
            options["num_gpus"] = stage.num_gpus
        if stage.fn_kwargs:
            options["fn_kwargs"] = stage.fn_kwargs
        if stage.is_actor:
            low, high = stage.pool
            options["compute"] = ray.data.ActorPoolStrategy(min_size=low, max_size=high)
            options["fn_constructor_kwargs"] = stage.constructor_kwargs
        dataset = dataset.map_batches(typed_output(stage.fn), **options)
    return dataset


def typed_output(fn: Callable[..., Any] | type) -> Callable[..., Any] | type:
    """Wrap an operator so that its numpy output becomes an Arrow table with the declared column types."""
    from llava_batch.pipeline.run.columns import to_arrow

    if isinstance(fn, type):
        operator_class = fn

        class Typed(operator_class):  # type: ignore[valid-type, misc]
            def __call__(self, batch: dict[str, Any]) -> Any:
                return to_arrow(super().__call__(batch))

        Typed.__name__ = Typed.__qualname__ = operator_class.__name__
        return Typed

    def typed(batch: dict[str, Any], **kwargs: Any) -> Any:
        return to_arrow(fn(batch, **kwargs))

    typed.__name__ = getattr(fn, "__name__", "operator")
    return typed


@dataclass(frozen=True)
class CpuShares:
    """CPU requests for the stages of a caption-like job, fitted to the cluster."""

    read: float
    preprocess: float
    generate: float


READ_CPUS = 0.25


def fit_cpu_shares(
    total_cpus: float,
    preprocess_workers: int,
    max_replicas: int,
    gpu_replicas: bool,
    *,
    tasks_cpus: float = READ_CPUS,
) -> CpuShares:
    """Choose CPU requests so that full actor pools still leave room for read tasks.

    On 2 cores, two 1-CPU pools plus a 1-CPU read task deadlock: the pools take every CPU and the read task
    that would feed them is never scheduled (measured on a 2-core machine). Scaling the actor requests down so that
    pools + one read task fit the cluster removes that state. GPU replicas live on GPU nodes, whose CPUs are not
    counted here, but they still need one CPU each to drive the GPU.
    """
    wanted = preprocess_workers * 1.0 + (0.0 if gpu_replicas else max_replicas * 1.0)
    # `tasks_cpus`: what must stay free for tasks to run beside full pools (a job's read task; inside a caller's
    # own Ray Data pipeline, their map_batches tasks, which ask for 1 CPU unless told otherwise).
    budget = max(total_cpus - tasks_cpus, 0.1)
    scale = min(1.0, budget / wanted) if wanted else 1.0
    share = math.floor(scale * 1000) / 1000  # round down: rounding up could overshoot the budget
    return CpuShares(read=READ_CPUS, preprocess=share, generate=1.0 if gpu_replicas else share)
