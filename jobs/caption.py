"""The caption job: one prompt for every image under a prefix, one output row per image.

Recipe: read image shards -> attach the prompt -> preprocess on CPU actors -> generate on the model replicas.
"""

from __future__ import annotations

import logging

from jobs.model_stages import model_call_stages, read_stage, resolve_gpus_per_replica
from operators.prompts import expand_prompts
from pipeline.config import CaptionConfig, ConfigError, JobConfig
from pipeline.inputs import plan_shards
from pipeline.model_families import ModelInfo, check_model_loadable, inspect_model, model_provenance
from pipeline.prompt_sets import PromptSpec
from pipeline.ray_cluster import ClusterResources, configure_ray_data, connect
from pipeline.runner import JobPlan, JobResult, run_job
from pipeline.stages import Stage, fit_cpu_shares
from pipeline.storage import IMAGE_EXTENSIONS, StorageOptions

logger = logging.getLogger(__name__)


def caption_stages(
    config: CaptionConfig, model: ModelInfo, resources: ClusterResources, options: StorageOptions
) -> list[Stage]:
    gpus = resolve_gpus_per_replica(config, resources)
    shares = fit_cpu_shares(
        resources.cpus, config.preprocess_workers, config.replicas.max, gpu_replicas=gpus > 0
    )
    return [
        read_stage(config, options, shares),
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
        *model_call_stages(
            config,
            model,
            shares,
            gpus,
            generate_kwargs=config.generation.generate_kwargs(),
            visual_prompt_field=config.visual_prompt_column,
        ),
    ]


def prompt_specs(config: CaptionConfig) -> list[PromptSpec]:
    """The prompt set, or the one `--prompt` (a template when it names `{fields}`)."""
    return config.prompt_set or [PromptSpec("p0", config.prompt)]


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
        **grouping(config),
    }


def grouping(config: JobConfig) -> dict:
    """Part of a job's fingerprint only when set, so outputs made before --group-by existed stay valid."""
    return {"group_by": config.group_by, "order_by": config.order_by} if config.group_by else {}


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
        group_by=config.group_by,
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
        # A group of images is one row: the files listed do not tell how many rows a shard has.
        rows_per_input=None if config.group_by else len(prompt_specs(config)),
        manifest_extra={
            "config": config.to_dict(),
            "input_format": input_format,
            "model": model_provenance(model),
        },
    )
    return run_job(plan)
