"""`build_processor`: llava-batch's preprocessing actors and model replicas as one step of your own Ray Data pipeline.

    processor = llava_batch.build_processor(model="llava-hf/llava-1.5-7b-hf", prompt="Describe this image.")
    captioned = processor(ray.data.read_parquet("s3://bucket/table/"))  # lazy, like any Dataset

The returned Dataset keeps every input column and adds `generated_text`, `num_input_tokens`, `num_output_tokens`,
`finish_reason` and `error`. A row whose image cannot be read or decoded stays, with `error` set. Inside, the rows
take the jobs' own path: llava_batch.operators.prompts, then the CPU preprocessing pool and the model replica pool of
llava_batch.jobs.common.model_call_stages. Your columns travel under a private prefix, so a column of yours named `prompt`
or `id` never meets the internal ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from llava_batch.pipeline.config import ConfigError, ModelSettings, load_config, setting
from llava_batch.pipeline.prompt_sets import PromptSettings

# The columns the processor adds to the caller's rows.
RESULT_COLUMNS = ("generated_text", "num_input_tokens", "num_output_tokens", "finish_reason", "error")
# CPUs kept free for the caller's own tasks: Ray Data's default request of a map_batches task.
CALLER_TASK_CPUS = 1.0
# The caller's columns travel as `<prefix><name>` between the processor's own first and last step.
USER_PREFIX = "__user__."


@dataclass
class ProcessorConfig(ModelSettings, PromptSettings):
    """The model call's settings (ModelSettings), where prompts come from (PromptSettings), and the image column."""

    image_column: str = setting(
        "image", "column with image bytes, {bytes, path} structs (HF datasets), paths/URIs, or lists of those"
    )
    s3_endpoint_url: str | None = setting(None, "S3 endpoint for image paths/URIs in the image column")

    def __post_init__(self) -> None:
        if not isinstance(self.image_column, str) or not self.image_column:
            raise ConfigError(f"image_column: {self.image_column!r} must name a column")
        super().__post_init__()


class Processor:
    """A callable Dataset -> Dataset; build it with `build_processor`."""

    def __init__(self, config: ProcessorConfig) -> None:
        from llava_batch.jobs.common import checked_model

        self.config = config
        self.model = checked_model(config)

    def __call__(self, dataset: Any) -> Any:
        from llava_batch.jobs.common import model_call_stages, resolve_gpus_per_replica
        from llava_batch.operators.prompts import expand_prompts
        from llava_batch.pipeline.run.ray_cluster import connect
        from llava_batch.pipeline.run.stages import Stage, apply_stages, plan_cpu_shares

        config = self.config
        columns = dataset.columns()
        if config.image_column not in columns:
            raise ConfigError(
                f"image_column: {config.image_column!r} is not a column of the dataset (it has {columns}); "
                "pass build_processor(..., image_column=NAME)"
            )
        resources = connect()  # the caller's Ray, or a local one started as the jobs start theirs
        gpus = resolve_gpus_per_replica(config, resources)
        # The caller's own map_batches tasks (1 CPU each by default) must still run beside full pools: on a small
        # machine, pools holding every CPU would starve the task that feeds them and the pipeline would hang.
        shares = plan_cpu_shares(
            resources.node_list(),
            config.preprocess_workers,
            config.replicas.max,
            gpus,
            tasks_cpus=CALLER_TASK_CPUS,
        )
        stages = [
            Stage(
                "to-rows",
                to_pipeline_rows,
                num_cpus=shares.read,
                fn_kwargs={"image_column": config.image_column, "s3_endpoint_url": config.s3_endpoint_url},
            ),
            Stage("prompt", expand_prompts, num_cpus=shares.read, fn_kwargs=config.prompt_stage_kwargs()),
            *model_call_stages(
                config,
                self.model,
                shares,
                gpus,
                generate_kwargs=config.generation.generate_kwargs(),
                visual_prompt_field=config.visual_prompt_column,
            ),
        ]
        processed = apply_stages(dataset, stages)
        keep_prompt_id = len(config.prompt_specs()) > 1
        return processed.map_batches(
            to_caller_rows,
            batch_format="numpy",
            zero_copy_batch=False,
            num_cpus=shares.read,
            fn_kwargs={"keep_prompt_id": keep_prompt_id},
        )


def build_processor(model: str, **settings: Any) -> Processor:
    """A processor for `model` (a hub id, a local folder, or `builtin:<family>`).

    Settings are the model call's and the prompt source's (the same names as the CLI flags, e.g. `prompt=`,
    `prompt_column=`, `conversation_column=`, `raw_prompt_column=`, `prompts_file=`, `image_column=`,
    `batch_size=`, `replicas=`, `gpus_per_replica=`, `max_new_tokens=`, `temperature=`, ...). A wrong one raises
    llava_batch.ConfigError naming it. Ray's global DataContext is left as it is.
    """
    return Processor(load_config(ProcessorConfig, None, {**settings, "model": model}))


def to_pipeline_rows(batch: dict[str, np.ndarray], *, image_column: str, s3_endpoint_url: str | None) -> dict:
    """The caller's rows -> the columns the operators read (`id`, `image_bytes`, `fields`, `error`, ...)."""
    from llava_batch.operators.batch import object_array, row_count
    from llava_batch.pipeline.io.formats.parquet import ImageFetcher, json_safe
    from llava_batch.pipeline.io.storage import StorageOptions

    size = row_count(batch)
    fetcher = ImageFetcher(StorageOptions(s3_endpoint_url), folder_uri="")
    ids, images, fields, errors = [], [], [], []
    for index in range(size):
        row = {name: _plain(values[index]) for name, values in batch.items()}
        row_fields = {name: json_safe(value) for name, value in row.items() if name != image_column}
        loaded, _, error = fetcher.load(row[image_column], image_column)
        fields_json = json.dumps(row_fields, sort_keys=True)
        digest = hashlib.sha256(fields_json.encode())
        for image in loaded or ():
            digest.update(image)
        # Content-derived: the same row gets the same id (and so the same sampling seed) in every run.
        ids.append(digest.hexdigest()[:20])
        images.append(loaded)
        fields.append(fields_json)
        errors.append(error)
    out = {USER_PREFIX + name: values for name, values in batch.items()}
    out.update(
        id=object_array(ids),
        shard_rows=np.ones(size, dtype=np.int64),
        image_bytes=object_array(images),
        fields=object_array(fields),
        error=object_array(errors),
    )
    return out


def to_caller_rows(batch: dict[str, np.ndarray], *, keep_prompt_id: bool) -> Any:
    """Back to the caller's columns (types inferred, as Ray Data would), plus the results with their declared
    types (and `prompt_id` when there are several prompts per row)."""
    import pyarrow as pa

    from llava_batch.pipeline.run.columns import to_arrow

    results = to_arrow(
        {name: batch[name] for name in RESULT_COLUMNS + (("prompt_id",) if keep_prompt_id else ())}
    )
    table = pa.table(
        {
            name[len(USER_PREFIX) :]: pa.array([_plain(value) for value in values])
            for name, values in batch.items()
            if name.startswith(USER_PREFIX)
        }
    )
    for name in results.column_names:
        table = table.append_column(name, results[name])
    return table


def _plain(value: Any) -> Any:
    """numpy values of a batch as plain Python (list columns arrive as object arrays)."""
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
