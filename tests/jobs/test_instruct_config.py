"""The instruct job's settings and stage plan, without Ray."""

import pytest

from llava_batch.jobs.instruct import InstructConfig, instruct_stages
from llava_batch.operators.model_source import builtin_model_path
from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.families import inspect_model
from llava_batch.pipeline.io.storage import StorageOptions
from llava_batch.pipeline.run.ray_cluster import ClusterResources

BASE = {"input": "/in", "output": "/out", "model": "m"}


def test_the_question_count_fills_the_instruction_and_row_fields_stay_placeholders():
    config = InstructConfig(
        **BASE, instruction="Ask {questions} questions about this {category} photo.", questions=2
    )
    assert config.instruction_text() == "Ask 2 questions about this {category} photo."
    assert InstructConfig(**BASE).instruction_text() == (
        "Ask 3 different questions about this image, one per line."
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"questions": 0}, "questions: 0 is out of range"),
        ({"turns": 21}, "turns: 21 is out of range"),
        ({"instruction": "  "}, "instruction: must be a non-empty string"),
        ({"instruction": "Ask {oops"}, "instruction: 'Ask {oops' is not a valid template"),
        ({"follow_up": ""}, "follow_up: must be a non-empty string"),
        ({"export_json": "/out/data.txt"}, "export_json: '/out/data.txt' must name a .json file"),
        ({"export_json": "/out/data.json"}, "export_json: '/out/data.json' is inside output '/out'"),
        ({"batch_size": 0}, "batch_size: 0 is out of range"),  # a shared setting, checked by JobConfig
    ],
)
def test_invalid_settings_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        InstructConfig(**{**BASE, **changes})


@pytest.mark.parametrize("turns", [1, 3])
def test_every_model_call_is_a_pool_and_all_pools_plus_a_read_task_fit_two_cpus(turns):
    model_dir = str(builtin_model_path("llava"))
    config = InstructConfig(input="/in", output="/out", model=model_dir, turns=turns, gpus_per_replica=0)
    stages = instruct_stages(config, inspect_model(model_dir), ClusterResources(2, 0, True), StorageOptions())
    names = [stage.name for stage in stages]
    calls = ["questions"] + [f"turn{turn}" for turn in range(1, turns + 1)]
    assert [name for name in names if name.startswith("generate-")] == [f"generate-{call}" for call in calls]
    assert names[:2] == ["read", "prompt"] and names[-1] == "finish"
    keeps = [
        stage.constructor_kwargs["keep_image_bytes"]
        for stage in stages
        if stage.name.startswith("preprocess")
    ]
    assert keeps == [True] * turns + [False]  # images travel on until the last model call
    actors = sum(stage.num_cpus * stage.pool[1] for stage in stages if stage.is_actor)
    assert actors + stages[0].num_cpus <= 2
