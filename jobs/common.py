"""What every job does the same way: check the model and list the input before Ray starts (`set_up_job`), read
shards, and call the model (preprocess on CPU actors, then generate on the model replicas). A job composes
them; the settings come from the shared JobConfig."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llava_batch.pipeline.config import ConfigError, JobConfig, ModelSettings
from llava_batch.pipeline.families import ModelInfo
from llava_batch.pipeline.io.shards import ReadSpec, Shard, with_sample_ids
from llava_batch.pipeline.io.storage import IMAGE_FOLDER_EXTENSIONS, StorageOptions, absolute_local_path
from llava_batch.pipeline.run.ray_cluster import ClusterResources
from llava_batch.pipeline.run.stages import CpuShares, Stage

logger = logging.getLogger(__name__)

# Rows per preprocessing call: large enough to amortise the call, small enough to keep blocks light.
PREPROCESS_BATCH_ROWS = 16


@dataclass(frozen=True)
class JobSetup:
    """A job's checked model, its planned input shards and the Ray cluster it runs on."""

    options: StorageOptions
    model: ModelInfo
    input_format: str
    shards: list[Shard]
    resources: ClusterResources
    # Files the listing left out, by extension (`{"mp4": 2, "txt": 1}`): in the manifest, so none goes unnoticed.
    skipped_files: dict[str, int] = field(default_factory=dict)

    def manifest_extra(self, config: JobConfig) -> dict[str, Any]:
        from llava_batch.pipeline.families import model_provenance

        return {
            "config": config.to_dict(),
            "input_format": self.input_format,
            "skipped_files": dict(self.skipped_files),
            "model": model_provenance(self.model),
        }


def set_up_job(config: JobConfig) -> JobSetup:
    """Everything that can be checked (settings, model family, input listing) is checked before Ray starts, so a
    typo costs seconds, not a cluster start; then connect to (or start) Ray.

    The model check imports transformers and loads the processor: 5-7 s of one core, the largest part of a small
    job's start-up before Ray. It runs in a thread beside the listing, and where this process starts its own
    local Ray, beside `ray.init` too (Ray's start is mostly waiting for its processes). A model that fails its
    check after Ray started stops that Ray again; the error and its exit code are the same."""
    from llava_batch.pipeline.io.formats import check_video_decoder, plan_shards
    from llava_batch.pipeline.io.storage import check_store
    from llava_batch.pipeline.run.ray_cluster import configure_ray_data, connect, shutdown, starts_local_ray

    options = StorageOptions(config.s3_endpoint_url)
    model_check = InBackground(lambda: checked_model(config))
    try:
        # Wrong credentials, a missing bucket or a store that is down: one line in seconds, not a minute of retries.
        check_store(config.input, options)
        check_store(config.output, options)
        skipped: Counter = Counter()
        input_format, shards = plan_shards(
            # Workers of a Ray that was already running (a shared or remote cluster, the caller's own) have another
            # working directory: a relative local path must reach them absolute. Shard ids do not contain it.
            absolute_local_path(config.input),
            options,
            input_format=config.input_format,
            files_per_shard=config.files_per_shard,
            limit=config.limit,
            group_by=config.group_by,
            skipped=skipped,
        )
        shards = with_sample_ids(shards, config.sample, config.seed)
        if not shards:
            raise ConfigError(
                f"input: nothing to read under {config.input!r} as {input_format} "
                f"(image or video files: {', '.join(IMAGE_FOLDER_EXTENSIONS)}; WebDataset: .tar; tables: .parquet)"
            )
        check_video_decoder(input_format, shards, options)
    except ConfigError:
        model_check.result()  # a broken model is reported first, as when it was checked first
        raise
    warned = warn_local_input(config)
    overlap = starts_local_ray(config.address) and not model_check.failed()
    if not overlap:
        model_check.result()
    resources = connect(config.address)
    try:
        model = model_check.result()
    except BaseException:  # the check failed (or was interrupted) after Ray started: stop that Ray too
        shutdown()
        raise
    if not warned:
        warn_local_input_on_other_machines(config, resources)
    configure_ray_data()
    return JobSetup(options, model, input_format, shards, resources, dict(sorted(skipped.items())))


def checked_model(config: ModelSettings) -> ModelInfo:
    """The model's family from its config, and a check that its processor and weight files load (a job's, or the
    Python API's processor's, in the caller's process: a wrong model fails at once, not inside an actor later)."""
    from llava_batch.pipeline.families import check_model_loadable, inspect_model

    model = inspect_model(config.model, trust_remote_code=config.trust_remote_code)
    check_model_loadable(model, trust_remote_code=config.trust_remote_code)
    return model


class InBackground:
    """`function()` run in a daemon thread (an interrupted start-up does not wait for it); `result()` waits and
    returns its value or raises its exception in the caller's thread."""

    def __init__(self, function: Any) -> None:
        import threading

        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(function,), daemon=True, name="model-check")
        self._thread.start()

    def _run(self, function: Any) -> None:
        try:
            self._value = function()
        except BaseException as error:  # handed to the caller's thread by result()
            self._error = error

    def failed(self) -> bool:
        """Finished already, with an exception."""
        return not self._thread.is_alive() and self._error is not None

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def warn_local_input(config: JobConfig) -> bool:
    """Before joining a remote cluster: read tasks run on its nodes, where a file on this machine's disk is not.
    (The output is written by this process, the driver, so a local output is fine.) Whether it warned."""
    import os

    from llava_batch.pipeline.run.ray_cluster import local_path_problem, remote_address

    problem = local_path_problem("input", config.input)
    if problem and remote_address(config.address or os.environ.get("RAY_ADDRESS")):
        logger.warning("%s", problem)
        return True
    return False


def warn_local_input_on_other_machines(config: JobConfig, resources: ClusterResources) -> None:
    """Once joined: an address on this machine (a tunnel, `auto` here) can still lead to nodes elsewhere, which
    the cluster's own node list tells."""
    from llava_batch.pipeline.run.ray_cluster import local_path_problem

    problem = local_path_problem("input", config.input)
    elsewhere = resources.other_machines()
    if problem and elsewhere:
        more = f" and {len(elsewhere) - 3} more" if len(elsewhere) > 3 else ""
        logger.warning("%s (nodes on other machines: %s%s)", problem, ", ".join(elsewhere[:3]), more)


def resolve_gpus_per_replica(config: ModelSettings, resources: ClusterResources) -> int:
    """Default: one GPU per replica when the cluster has GPUs, else run the replicas on CPU."""
    if config.gpus_per_replica is None:
        return 1 if resources.gpus >= 1 else 0
    if config.gpus_per_replica > 0 and resources.local and resources.gpus < config.gpus_per_replica:
        raise ConfigError(
            f"gpus_per_replica: {config.gpus_per_replica} GPUs asked per replica but this machine's Ray sees "
            f"{resources.gpus:g}; use --gpus-per-replica 0 to run on CPU, or join a GPU cluster with --address"
        )
    return config.gpus_per_replica


def read_spec(config: JobConfig) -> ReadSpec:
    return ReadSpec(
        image_column=config.image_column,
        id_column=config.id_column,
        keep_columns=config.keep_columns,
        sample=config.sample,
        seed=config.seed,
        group_by=config.group_by,
        order_by=config.order_by,
    )


def read_stage(config: JobConfig, options: StorageOptions, shares: CpuShares) -> Stage:
    from llava_batch.pipeline.io.read_stage import read_shards

    return Stage(
        "read",
        read_shards,
        batch_size=1,
        num_cpus=shares.read,
        fn_kwargs={"options": options, "spec": read_spec(config)},
    )


def model_call_stages(
    config: ModelSettings,
    model: ModelInfo,
    shares: CpuShares,
    gpus: int,
    *,
    generate_kwargs: dict[str, Any],
    name: str = "",
    visual_prompt_field: str | None = None,
    keep_image_bytes: bool = False,
) -> list[Stage]:
    """preprocess -> generate, as two actor pools. `name` suffixes the stage names when a job calls the model
    more than once (instruct: questions, then each turn)."""
    from llava_batch.operators.generation.replica import Generate
    from llava_batch.operators.preprocess import PreprocessForModel
    from llava_batch.pipeline.families.prompt_formats import fallback_chat_template

    suffix = f"-{name}" if name else ""
    return [
        Stage(
            f"preprocess{suffix}",
            PreprocessForModel,
            batch_size=PREPROCESS_BATCH_ROWS,
            num_cpus=shares.preprocess,
            pool=(1, config.preprocess_workers),
            constructor_kwargs={
                "model": config.model,
                "max_image_pixels": config.max_image_pixels,
                "exact_decode": config.exact_decode,
                "fallback_chat_template": fallback_chat_template(model),
                "trust_remote_code": config.trust_remote_code,
                "visual_prompt_field": visual_prompt_field,
                "keep_image_bytes": keep_image_bytes,
                "video_frames": config.video_frames,
            },
        ),
        Stage(
            f"generate{suffix}",
            Generate,
            # A window of several batches per call, regrouped by prompt length inside the replica.
            batch_size=config.batch_size * config.length_window,
            num_cpus=shares.replica_request(gpus),
            num_gpus=gpus,
            pool=(config.replicas.min, config.replicas.max),
            constructor_kwargs={
                "model": config.model,
                "generate_kwargs": generate_kwargs,
                "seed": config.seed,
                "dtype": config.dtype,
                "attn_implementation": config.attn_implementation,
                "compile": config.compile,
                "trust_remote_code": config.trust_remote_code,
                # A replica larger than one GPU: its layers spread evenly over its GPUs (llava_batch.operators.generation.placement).
                "device_map": "balanced" if gpus > 1 else None,
                "rows_per_call": config.batch_size,
                "max_batch_tokens": config.batch_tokens,
                "group_by_length": config.length_window > 1,
                "share_image_prefix": config.share_image_prefix,
                "continuous_batching": config.continuous_batching,
                "quantization": config.quantization,
            },
        ),
    ]
