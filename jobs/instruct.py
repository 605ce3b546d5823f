"""The instruct job: synthetic visual instruction data, LLaVA-style, from your own images.

Recipe: read images -> the model writes K questions per image -> parse them (one row per question) -> the model
answers each with the image, for `turns` turns -> one output row per conversation; optionally a LLaVA JSON file.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from llava_batch.pipeline.config import (
    ConfigError,
    JobConfig,
    _check_range,
    _same_or_nested,
    check_template,
    fingerprint_defaults,
    job_fingerprint,
    setting,
)
from llava_batch.pipeline.run.stages import Stage

if TYPE_CHECKING:
    from llava_batch.pipeline.families import ModelInfo
    from llava_batch.pipeline.io.storage import StorageOptions
    from llava_batch.pipeline.run.ray_cluster import ClusterResources
    from llava_batch.pipeline.run.runner import JobResult

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Ask {questions} different questions about this image, one per line."
DEFAULT_FOLLOW_UP = "Tell me more about that."

# The output columns, in order; `--keep-columns` follow.
INSTRUCT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
        ("model", pa.string()),
        ("settings", pa.string()),
        ("error", pa.string()),
        ("shard_id", pa.string()),
    ]
)


@dataclass
class InstructConfig(JobConfig):
    """`llava-batch instruct`: the shared job settings plus how questions are asked and conversations grow.

    `max_new_tokens` bounds each answer; `question_max_new_tokens` bounds the reply that lists the questions.
    """

    job_name: ClassVar[str] = "instruct"
    # The JSON export is written from the rows after the run; it does not change them.
    run_only_settings: ClassVar[frozenset[str]] = JobConfig.run_only_settings | {"export_json"}

    instruction: str = setting(
        DEFAULT_INSTRUCTION,
        "stage 1: what the model is asked per image; {questions} = the count, {field}s from the row",
    )
    questions: int = setting(3, "most questions kept per image (one output row per question)")
    turns: int = setting(
        1, "turns per conversation; later turns ask the image's other questions, then --follow-up"
    )
    follow_up: str = setting(
        DEFAULT_FOLLOW_UP, "user text of later turns once the image's own questions are used up"
    )
    question_max_new_tokens: int = setting(128, "most tokens of the stage-1 reply that lists the questions")
    export_json: str | None = setting(
        None, "after the run, also write the LLaVA training JSON file here (error rows left out)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("instruction", "follow_up"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name}: must be a non-empty string (got {value!r})")
        check_template("instruction", self.instruction)
        _check_range("questions", self.questions, 1, 50)
        _check_range("turns", self.turns, 1, 20)
        _check_range("question_max_new_tokens", self.question_max_new_tokens, 1, 32768)
        if self.export_json is not None:
            if not str(self.export_json).endswith(".json"):
                raise ConfigError(f"export_json: {self.export_json!r} must name a .json file")
            if _same_or_nested(self.output, self.export_json):
                # Parquet readers of the output folder would try to read the JSON file as a table.
                raise ConfigError(
                    f"export_json: {self.export_json!r} is inside output {self.output!r}; write it next to it"
                )

    def instruction_text(self) -> str:
        """The stage-1 prompt: `{questions}` becomes the count; other `{field}`s are filled from each row."""
        return self.instruction.replace("{questions}", str(self.questions))


def instruct_stages(
    config: InstructConfig, model: ModelInfo, resources: ClusterResources, options: StorageOptions
) -> list[Stage]:
    """read -> prompt -> [preprocess -> generate] questions -> parse -> per turn [preprocess -> generate -> grow].

    Every model call is its own pair of actor pools; the CPU requests of all pools plus a read task fit the
    cluster (llava_batch.pipeline.run.stages.plan_cpu_shares), else Ray Data can wait forever for a CPU (seen on 2 cores).
    """
    # Imported here: the CLI imports this module for the config's flags, and these pull in torch.
    from llava_batch.jobs.common import model_call_stages, read_stage, resolve_gpus_per_replica
    from llava_batch.operators.conversation import (
        continue_conversation,
        finish_conversation,
        start_conversation,
    )
    from llava_batch.operators.parse_questions import explode_questions
    from llava_batch.operators.prompts import expand_prompts
    from llava_batch.pipeline.run.stages import plan_cpu_shares

    gpus = resolve_gpus_per_replica(config, resources)
    calls = config.turns + 1  # the question-writing call, then one per turn
    shares = plan_cpu_shares(
        resources.node_list(), config.preprocess_workers * calls, config.replicas.max * calls, gpus
    )

    def model_call(name: str, max_new_tokens: int, keep_image_bytes: bool) -> list[Stage]:
        generation = config.generation.generate_kwargs() | {"max_new_tokens": max_new_tokens}
        return model_call_stages(
            config,
            model,
            shares,
            gpus,
            generate_kwargs=generation,
            name=name,
            keep_image_bytes=keep_image_bytes,
        )

    def task(name: str, fn: Any, **kwargs: Any) -> Stage:
        return Stage(name, fn, num_cpus=shares.read, fn_kwargs=kwargs)

    stages = [
        read_stage(config, options, shares),
        task("prompt", expand_prompts, prompts=[{"prompt_id": "ask", "text": config.instruction_text()}]),
        *model_call("questions", config.question_max_new_tokens, keep_image_bytes=True),
        task("parse", explode_questions, max_questions=config.questions),
        task("start", start_conversation),
    ]
    for turn in range(1, config.turns + 1):
        last = turn == config.turns
        stages += model_call(f"turn{turn}", config.max_new_tokens, keep_image_bytes=not last)
        if last:
            stages.append(task("finish", finish_conversation, settings=json.dumps(settings(config))))
        else:
            stages.append(task(f"next{turn}", continue_conversation, follow_up=config.follow_up))
    return stages


def settings(config: InstructConfig) -> dict[str, Any]:
    """What made a conversation, stored on every row (`settings` column, JSON)."""
    return {
        "instruction": config.instruction_text(),
        "questions": config.questions,
        "turns": config.turns,
        "follow_up": config.follow_up,
        "question_max_new_tokens": config.question_max_new_tokens,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "seed": config.seed,
    }


def fingerprint(config: InstructConfig, model: ModelInfo) -> dict[str, Any]:
    """Every setting that can change a row (llava_batch.pipeline.config.job_fingerprint), the instruction as sent:
    outputs made with other values must not be mixed in."""
    return {
        "job": "instruct",
        "family": model.family,
        **job_fingerprint(config),
        "instruction": config.instruction_text(),
    }


def instruct_output_table(table: pa.Table, keep_columns: tuple[str, ...] = ()) -> pa.Table:
    """The gathered rows of a shard as output: the instruct columns, then the kept input columns."""
    from llava_batch.pipeline.run.commit import to_output_table

    extra = [name for name in keep_columns if name in table.column_names]
    table = table.select(
        [name for name in table.column_names if name in INSTRUCT_SCHEMA.names or name in extra]
    )
    return to_output_table(table, INSTRUCT_SCHEMA)


def export_llava_json(output_uri: str, target: str, options: StorageOptions) -> tuple[int, int]:
    """Write the LLaVA training file (`[{id, image, conversations}]`) from the Parquet parts, one record batch
    at a time so the driver never holds the whole output. Error rows are left out. Returns (written, skipped)."""
    import pyarrow.parquet as pq

    from llava_batch.pipeline.io.storage import filesystem_for, join_uri, list_names
    from llava_batch.pipeline.run.commit import PART_PREFIX, PART_SUFFIX

    written = skipped = 0
    source_fs, _ = filesystem_for(output_uri, options)
    target_fs, target_path = filesystem_for(target, options)
    parts = sorted(
        name
        for name in list_names(output_uri, options)
        if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
    )
    with target_fs.open_output_stream(target_path) as stream:
        stream.write(b"[")
        for name in parts:
            _, part_path = filesystem_for(join_uri(output_uri, name), options)
            with source_fs.open_input_file(part_path) as handle:
                reader = pq.ParquetFile(handle)
                for batch in reader.iter_batches(columns=["id", "image", "conversations", "error"]):
                    for row in batch.to_pylist():
                        if row["error"] is not None or not row["conversations"]:
                            skipped += 1
                            continue
                        record = {
                            "id": row["id"],
                            "image": row["image"],
                            "conversations": row["conversations"],
                        }
                        stream.write((",\n" if written else "\n").encode() + json.dumps(record).encode())
                        written += 1
        stream.write(b"\n]\n")
    logger.info("exported %d conversation(s) to %s; %d error row(s) left out", written, target, skipped)
    return written, skipped


def run_instruct(config: InstructConfig) -> JobResult:
    """The whole job; settings, model and input are checked before Ray starts, as for caption."""
    from llava_batch.jobs.common import set_up_job
    from llava_batch.pipeline.run.runner import JobPlan, run_job

    setup = set_up_job(config)
    plan = JobPlan(
        job="instruct",
        output_uri=config.output,
        options=setup.options,
        shards=setup.shards,
        stages=instruct_stages(config, setup.model, setup.resources, setup.options),
        fingerprint=fingerprint(config, setup.model),
        fingerprint_defaults=fingerprint_defaults(type(config)),
        overwrite=config.overwrite,
        trial=config.is_trial,
        rows_per_input=None,  # one row per parsed question: known per image only after the model wrote them
        output_table=functools.partial(instruct_output_table, keep_columns=config.keep_columns),
        manifest_extra=setup.manifest_extra(config),
    )
    result = run_job(plan)
    if config.export_json:
        export_llava_json(config.output, config.export_json, setup.options)
    return result
