"""Turn a job's list of stages into Ray Data operators with their resources.

Operators know nothing about Ray; a `Stage` says how one runs (task or actor pool, CPUs, GPUs, batch size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


def scale_up_limits(stages: list[Stage], cluster_cpus: float) -> tuple[float, float]:
    """The most CPUs and GPUs a job's stages may hold: Ray Data's own cluster autoscaler asks the cluster for more
    nodes up to these, so they must be what the plan uses.

    Unlimited, a job asking for one GPU replica on cluster.yaml's node types (a CPU head, GPU workers from zero)
    made Ray Data ask for CPUs for its read and preprocessing backlog, and the only node types with CPUs to add
    were GPU workers: ten of them started (seen with the fake_multinode autoscaler, tests/cluster/). The CPU
    plan is made for the nodes up at the start, so the CPU limit is their CPUs; the GPU limit is every GPU pool
    at its largest.
    """
    gpus = sum(stage.num_gpus * stage.pool[1] for stage in stages if stage.is_actor and stage.num_gpus)
    return cluster_cpus, float(gpus)


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
    """CPU requests for the stages of a caption-like job, fitted to the cluster's nodes."""

    read: float
    preprocess: float
    # The CPU a model replica is planned to use (kept out of the CPU actors' shares on its node).
    generate: float

    def replica_request(self, gpus_per_replica: float) -> float:
        """The CPUs a replica asks Ray for: its planned share on CPU, none for a GPU replica.

        A GPU replica's placement must never wait for a CPU: on a cluster of 1-CPU GPU workers, a preprocessing
        actor placed on a GPU worker while the head was busy with read tasks took the CPU its replica needed,
        and that replica never started (seen in tests/cluster/test_multinode.py). The GPU is what places a
        replica; the plan still leaves `generate` CPUs per replica out of the CPU actors' shares.
        """
        return 0.0 if gpus_per_replica else self.generate


@dataclass(frozen=True)
class NodeResources:
    """One node's logical CPUs and GPUs, as Ray reports them (`ray.nodes()`)."""

    cpus: float
    gpus: float = 0.0


READ_CPUS = 0.25
# Below this a CPU actor's request means nothing to the scheduler; a plan that needs less has no room.
MIN_SHARE = 0.01
# Steps down for a GPU replica's CPU when whole CPUs per replica would leave GPU-only clusters nothing to read with.
_GENERATE_STEPS = (1.0, 0.75, 0.5, 0.25, 0.1, 0.05)


def plan_cpu_shares(
    nodes: Sequence[NodeResources],
    preprocess_workers: int,
    max_replicas: int,
    gpus_per_replica: float,
    *,
    tasks_cpus: float = READ_CPUS,
) -> CpuShares:
    """Choose CPU requests, node by node, so that full actor pools never leave the read tasks without a CPU.

    A GPU replica's CPU comes out of its own GPU node; the preprocessing actors (and CPU replicas) take whatever
    CPUs are left anywhere; and however Ray places those actors, some node must keep `tasks_cpus` free for a read
    task (on a cluster of a CPU head and 1-CPU GPU workers, shares of the cluster's total CPU gave every CPU to the
    actors and the reads waited forever). Raises ConfigError when no plan leaves room.
    """
    from llava_batch.pipeline.config import ConfigError

    nodes = [node for node in nodes if node.cpus > 0 or node.gpus > 0]
    if not nodes:
        raise ConfigError("cluster: Ray reports no node with CPUs; start the cluster's nodes before the job")
    cpu_actors = preprocess_workers + (0 if gpus_per_replica else max_replicas)
    # Replica slots per GPU node, filled in node order up to the pool's size. With no GPU node up yet (an
    # autoscaler still starting them) the replicas are placed later, on nodes the plan cannot see.
    replicas_on: list[int] = []
    left = max_replicas if gpus_per_replica else 0
    for node in nodes:
        slots = min(int(node.gpus // gpus_per_replica), left) if gpus_per_replica else 0
        replicas_on.append(slots)
        left -= slots
    if not any(replicas_on):
        share = _largest_share([node.cpus for node in nodes], cpu_actors, tasks_cpus)
        if share is None:
            raise ConfigError(_no_room(nodes, tasks_cpus))
        return CpuShares(read=READ_CPUS, preprocess=share, generate=1.0 if gpus_per_replica else share)
    # A replica needs one CPU to drive its GPU at most; less when its node has fewer CPUs than replicas, or when
    # the GPU nodes' CPUs are all there is for preprocessing and reading.
    most = min(node.cpus / count for node, count in zip(nodes, replicas_on, strict=True) if count)
    for step in _GENERATE_STEPS:
        generate = _round_down(min(step, most))
        free = [node.cpus - count * generate for node, count in zip(nodes, replicas_on, strict=True)]
        share = _largest_share(free, cpu_actors, tasks_cpus)
        if share is not None:
            return CpuShares(read=READ_CPUS, preprocess=share, generate=generate)
    raise ConfigError(_no_room(nodes, tasks_cpus))


def reads_always_fit(free: Sequence[float], share: float, actors: int, tasks_cpus: float) -> bool:
    """Whether `actors` actors of `share` CPUs each fit on nodes with `free` CPUs and, wherever Ray places them,
    leave some node with `tasks_cpus` free.

    To starve the reads, a placement must bring every node below `tasks_cpus` free. A node whose fullest packing
    still leaves `tasks_cpus` cannot be brought there; any other node takes floor((free - tasks) / share) + 1
    actors to get there. The reads always fit when some node cannot be filled, or when the actors are too few to
    fill them all.
    """
    eps = 1e-9
    slots = [math.floor(cpus / share + eps) for cpus in free]
    if sum(slots) < actors:
        return False
    to_starve = 0
    for cpus, count in zip(free, slots, strict=True):
        if cpus + eps < tasks_cpus:
            continue  # already too small for a read task
        if cpus - count * share + eps >= tasks_cpus:
            return True  # even packed full, this node keeps room for a read task
        to_starve += math.floor((cpus - tasks_cpus) / share + eps) + 1
    return actors < to_starve


def _largest_share(free: Sequence[float], actors: int, tasks_cpus: float) -> float | None:
    """The largest CPU request (a whole thousandth, at most 1) that passes `reads_always_fit`."""
    if not actors:
        return 1.0 if any(cpus + 1e-9 >= tasks_cpus for cpus in free) else None
    for thousandths in range(1000, int(MIN_SHARE * 1000) - 1, -1):
        share = thousandths / 1000
        if reads_always_fit(free, share, actors, tasks_cpus):
            return share
    return None


def _round_down(value: float) -> float:
    # Rounding up could overshoot a node's CPUs by a hair and leave an actor unschedulable.
    return math.floor(value * 1000 + 1e-9) / 1000


def _no_room(nodes: Sequence[NodeResources], tasks_cpus: float) -> str:
    listed = ", ".join(f"{node.cpus:g} CPU/{node.gpus:g} GPU" for node in nodes[:8])
    return (
        f"cluster: its nodes ({listed}) leave no CPU for the preprocessing actors and a {tasks_cpus:g}-CPU read "
        "task beside the model replicas; add a CPU node, or lower --preprocess-workers / --replicas"
    )


def fit_cpu_shares(
    total_cpus: float,
    preprocess_workers: int,
    max_replicas: int,
    gpu_replicas: bool,
    *,
    tasks_cpus: float = READ_CPUS,
) -> CpuShares:
    """`plan_cpu_shares` for one node of `total_cpus` (a laptop's local Ray); GPU replicas' CPUs not counted."""
    return plan_cpu_shares(
        [NodeResources(total_cpus)],
        preprocess_workers,
        max_replicas,
        1 if gpu_replicas else 0,
        tasks_cpus=tasks_cpus,
    )
