"""The caption job: one prompt for every image under a prefix, one output row per image.

Recipe: read image shards -> attach the prompt -> preprocess on CPU actors -> generate on the model replicas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llava_batch.jobs.common import model_call_stages, read_stage, resolve_gpus_per_replica, set_up_job
from llava_batch.operators.prompts import expand_prompts
from llava_batch.pipeline.config import JobConfig, fingerprint_defaults, job_fingerprint
from llava_batch.pipeline.families import ModelInfo
from llava_batch.pipeline.io.storage import StorageOptions
from llava_batch.pipeline.prompt_sets import PromptSettings
from llava_batch.pipeline.run.ray_cluster import ClusterResources
from llava_batch.pipeline.run.runner import JobPlan, JobResult, run_job
from llava_batch.pipeline.run.stages import Stage, plan_cpu_shares

logger = logging.getLogger(__name__)


@dataclass
class CaptionConfig(JobConfig, PromptSettings):
    """Everything `llava-batch caption` needs: the shared job settings plus where each row's prompt comes from."""


def caption_stages(
    config: CaptionConfig, model: ModelInfo, resources: ClusterResources, options: StorageOptions
) -> list[Stage]:
    gpus = resolve_gpus_per_replica(config, resources)
    shares = plan_cpu_shares(resources.node_list(), config.preprocess_workers, config.replicas.max, gpus)
    return [
        read_stage(config, options, shares),
        Stage(
            "prompt",
            expand_prompts,
            num_cpus=shares.read,
            fn_kwargs=config.prompt_stage_kwargs(),
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


def fingerprint(config: CaptionConfig, model: ModelInfo) -> dict:
    """Every setting that can change a row (llava_batch.pipeline.config.job_fingerprint), plus the prompts file's content:
    outputs made with other values must not be mixed in."""
    return {
        "job": "caption",
        "family": model.family,
        **job_fingerprint(config),
        "prompts": [prompt.to_dict() for prompt in config.prompt_set],
    }


def run_caption(config: CaptionConfig) -> JobResult:
    setup = set_up_job(config)
    plan = JobPlan(
        job="caption",
        output_uri=config.output,
        options=setup.options,
        shards=setup.shards,
        stages=caption_stages(config, setup.model, setup.resources, setup.options),
        fingerprint=fingerprint(config, setup.model),
        fingerprint_defaults=fingerprint_defaults(type(config)),
        overwrite=config.overwrite,
        trial=config.is_trial,
        # A group of images is one row, and --sample keeps a share of the files: either way the files listed do not
        # tell how many rows a shard has.
        rows_per_input=None if config.group_by or config.sample is not None else len(config.prompt_specs()),
        manifest_extra=setup.manifest_extra(config),
    )
    return run_job(plan)
