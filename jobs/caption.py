"""The caption job: one prompt for every image under a prefix, one output row per image.

Recipe: read image shards -> attach the prompt -> preprocess on CPU actors -> generate on the model replicas.
"""

from __future__ import annotations

import logging

from operators.generate import Generate
from operators.preprocess import PreprocessForModel
from operators.prompts import expand_prompts
from pipeline.config import CaptionConfig, ConfigError
from pipeline.inputs import plan_shards
from pipeline.model_families import ModelInfo, check_model_loadable, inspect_model, model_provenance
from pipeline.prompt_formats import fallback_chat_template
from pipeline.prompt_sets import PromptSpec
from pipeline.ray_cluster import ClusterResources, configure_ray_data, connect
from pipeline.readers import ReadSpec, read_shards
from pipeline.runner import JobPlan, JobResult, run_job
from pipeline.stages import Stage, fit_cpu_shares
from pipeline.storage import IMAGE_EXTENSIONS, StorageOptions

logger = logging.getLogger(__name__)

# Rows per preprocessing call: large enough to amortise the call, small enough to keep blocks light.
PREPROCESS_BATCH_ROWS = 16


def resolve_gpus_per_replica(config: CaptionConfig, resources: ClusterResources) -> int:
    """Default: one GPU per replica when the cluster has GPUs, else run the replicas on CPU."""
    if config.gpus_per_replica is None:
        return 1 if resources.gpus >= 1 else 0
    if config.gpus_per_replica > 0 and resources.local and resources.gpus < config.gpus_per_replica:
        raise ConfigError(
            f"gpus_per_replica: {config.gpus_per_replica} GPUs asked per replica but this machine's Ray sees "
            f"{resources.gpus:g}; use --gpus-per-replica 0 to run on CPU, or join a GPU cluster with --address"
        )
    return config.gpus_per_replica


def caption_stages(
    config: CaptionConfig, model: ModelInfo, resources: ClusterResources, options: StorageOptions
) -> list[Stage]:
    gpus = resolve_gpus_per_replica(config, resources)
    shares = fit_cpu_shares(
        resources.cpus, config.preprocess_workers, config.replicas.max, gpu_replicas=gpus > 0
    )
    return [
        Stage(
            "read",
            read_shards,
            batch_size=1,
            num_cpus=shares.read,
            fn_kwargs={"options": options, "spec": read_spec(config)},
        ),
        Stage(
            "prompt",
            expand_prompts,
            num_cpus=shares.read,
            fn_kwargs={
                "prompts": [prompt.to_dict() for prompt in prompt_specs(config)],
                "prompt_column": config.prompt_column,
                "conversation_column": config.conversation_column,
            },
        ),
        Stage(
            "preprocess",
            PreprocessForModel,
            batch_size=PREPROCESS_BATCH_ROWS,
            num_cpus=shares.preprocess,
            pool=(1, config.preprocess_workers),
            constructor_kwargs={
                "model": config.model,
                "max_image_pixels": config.max_image_pixels,
                "fallback_chat_template": fallback_chat_template(model),
                "trust_remote_code": config.trust_remote_code,
                "visual_prompt_field": config.visual_prompt_column,
            },
        ),
        Stage(
            "generate",
            Generate,
            # A window of several batches per call, regrouped by prompt length inside the replica.
            batch_size=config.batch_size * config.length_window,
            num_cpus=shares.generate,
            num_gpus=gpus,
            pool=(config.replicas.min, config.replicas.max),
            constructor_kwargs={
                "model": config.model,
                "generate_kwargs": config.generation.generate_kwargs(),
                "seed": config.seed,
                "dtype": config.dtype,
                "attn_implementation": config.attn_implementation,
                "compile": config.compile,
                "trust_remote_code": config.trust_remote_code,
                # A replica larger than one GPU: its layers spread evenly over its GPUs (pipeline.placement).
                "device_map": "balanced" if gpus > 1 else None,
                "rows_per_call": config.batch_size,
                "max_batch_tokens": config.batch_tokens,
                "group_by_length": config.length_window > 1,
            },
        ),
    ]


def prompt_specs(config: CaptionConfig) -> list[PromptSpec]:
    """The prompt set, or the one `--prompt` (a template when it names `{fields}`)."""
    return config.prompt_set or [PromptSpec("p0", config.prompt)]


def read_spec(config: CaptionConfig) -> ReadSpec:
    return ReadSpec(
        image_column=config.image_column,
        id_column=config.id_column,
        keep_columns=config.keep_columns,
        sample=config.sample,
        seed=config.seed,
    )


def fingerprint(config: CaptionConfig, model: ModelInfo) -> dict:
    """The settings that change a row's result: outputs made with other values must not be mixed in."""
    return {
        "job": "caption",
        "model": config.model,
        "family": model.family,
        "prompt": config.prompt,
        "prompts": [prompt.to_dict() for prompt in config.prompt_set],
        "prompt_column": config.prompt_column,
        "conversation_column": config.conversation_column,
        "visual_prompt_column": config.visual_prompt_column,
        "image_column": config.image_column,
        "id_column": config.id_column,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "seed": config.seed,
        "dtype": config.dtype,
        "max_image_pixels": config.max_image_pixels,
    }


def run_caption(config: CaptionConfig) -> JobResult:
    """The whole job. Everything that can be checked (settings, model family, input listing) is checked before
    Ray starts, so a typo costs seconds, not a cluster start."""
    options = StorageOptions(config.s3_endpoint_url)
    model = inspect_model(config.model, trust_remote_code=config.trust_remote_code)
    check_model_loadable(model, trust_remote_code=config.trust_remote_code)
    input_format, shards = plan_shards(
        config.input,
        options,
        input_format=config.input_format,
        files_per_shard=config.files_per_shard,
        limit=config.limit,
    )
    if not shards:
        raise ConfigError(
            f"input: nothing to read under {config.input!r} as {input_format} "
            f"(image files: {', '.join(IMAGE_EXTENSIONS)}; WebDataset: .tar; tables: .parquet)"
        )
    resources = connect(config.address)
    configure_ray_data()
    plan = JobPlan(
        job="caption",
        output_uri=config.output,
        options=options,
        shards=shards,
        stages=caption_stages(config, model, resources, options),
        fingerprint=fingerprint(config, model),
        overwrite=config.overwrite,
        rows_per_input=len(prompt_specs(config)),
        manifest_extra={
            "config": config.to_dict(),
            "input_format": input_format,
            "model": model_provenance(model),
        },
    )
    return run_job(plan)
