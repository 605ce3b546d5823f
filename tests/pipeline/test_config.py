import pytest

from llava_batch.jobs.caption import CaptionConfig
from llava_batch.pipeline.config import ConfigError, ReplicaRange, load_config

BASE = {"input": "/data/images", "output": "/data/captions", "model": "/models/tiny"}


def test_defaults_are_greedy_and_one_replica():
    config = CaptionConfig(**BASE)
    assert config.replicas == ReplicaRange(1, 1)
    assert config.generation.generate_kwargs()["do_sample"] is False
    assert config.generation.generate_kwargs()["max_new_tokens"] == 64


def test_sampling_settings_reach_generate():
    kwargs = CaptionConfig(**BASE, temperature=0.7, top_p=0.9).generation.generate_kwargs()
    assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.7 and kwargs["top_p"] == 0.9


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [("2", ReplicaRange(2, 2)), ("1:4", ReplicaRange(1, 4)), (3, ReplicaRange(3, 3))],
)
def test_replicas_parse(replicas, expected):
    assert CaptionConfig(**BASE, replicas=replicas).replicas == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replicas": "4:2"}, "replicas: '4:2' must satisfy 1 <= MIN <= MAX"),
        ({"replicas": "many"}, "replicas: 'many' is not a replica count"),
        ({"batch_size": 0}, "batch_size: 0 is out of range"),
        ({"dtype": "fp8"}, "dtype: 'fp8' is not one of auto, float32, bfloat16, float16"),
        ({"temperature": -1.0}, "temperature: -1.0 is out of range"),
        ({"model": ""}, "model: required"),
        ({"output": "/data/images/captions"}, "is inside (or equal to) input"),
    ],
)
def test_invalid_settings_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CaptionConfig(**{**BASE, **changes})


def test_s3_output_inside_s3_input_is_refused():
    with pytest.raises(ConfigError, match="inside"):
        CaptionConfig(input="s3://bucket/images", output="s3://bucket/images/out", model="m")
    CaptionConfig(input="s3://bucket/images", output="s3://bucket/images-captions", model="m")


def test_yaml_then_flags_override(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "input: /in\noutput: /out\nmodel: /m\nbatch-size: 4\nprompt: from yaml\noverwrite: true\n"
    )
    config = load_config(CaptionConfig, path, {"prompt": "from flag", "batch_size": None})
    assert (config.batch_size, config.prompt, config.overwrite) == (4, "from flag", True)


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: /in\noutput: /out\nmodel: /m\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['batchsize'\]"):
        load_config(CaptionConfig, path, {})


def test_yaml_value_of_wrong_type(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: /in\noutput: /out\nmodel: /m\nbatch_size: lots\n")
    with pytest.raises(ConfigError, match="batch_size: 'lots' is not a number"):
        load_config(CaptionConfig, path, {})


def test_a_broken_prompt_template_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"prompt: 'Describe \{this' is not a valid template"):
        CaptionConfig(**BASE, prompt="Describe {this")


def test_only_one_source_of_prompts(tmp_path):
    with pytest.raises(ConfigError, match="conversation_column: cannot be combined with prompt_column"):
        CaptionConfig(**BASE, prompt_column="q", conversation_column="c")


def test_keep_columns_from_a_comma_separated_flag():
    assert CaptionConfig(**BASE, keep_columns="a, b").keep_columns == ("a", "b")


def test_credentials_in_urls_are_redacted_from_the_config_record():
    config = CaptionConfig(
        input="s3://bucket/in",
        output="s3://bucket/out",
        model="m",
        s3_endpoint_url="http://AKIA:s3cr3t@minio:9000",
    )
    record = str(config.to_dict())
    assert "s3cr3t" not in record and "AKIA" not in record
    assert config.to_dict()["s3_endpoint_url"] == "http://***@minio:9000"


def test_flash_attention_without_flash_attn_is_refused_with_the_fix(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError) as error:
        CaptionConfig(**BASE, attn_implementation="flash_attention_2")
    assert "pip install flash-attn" in str(error.value) and "--attn-implementation sdpa" in str(error.value)
    assert CaptionConfig(**BASE, attn_implementation="sdpa").attn_implementation == "sdpa"


def test_compile_is_off_by_default_and_reaches_the_model_stage():
    from llava_batch.jobs.caption import caption_stages
    from llava_batch.pipeline.families import ModelInfo
    from llava_batch.pipeline.io.storage import StorageOptions
    from llava_batch.pipeline.run.ray_cluster import ClusterResources

    assert CaptionConfig(**BASE).compile is False
    with pytest.raises(ConfigError, match="compile"):
        CaptionConfig(**BASE, compile="yes")
    model = ModelInfo("/models/tiny", "llava", "llava", "llama", "clip_vision_model")
    resources = ClusterResources(cpus=2, gpus=0, local=True)
    for value in (False, True):
        stages = caption_stages(CaptionConfig(**BASE, compile=value), model, resources, StorageOptions())
        generate = next(stage for stage in stages if stage.name == "generate")
        assert generate.constructor_kwargs["compile"] is value


def test_output_inside_the_input_through_a_symlink_is_refused(tmp_path):
    """Compared as real paths: a link to a folder inside the input, a symlinked parent, an output not made yet."""
    from llava_batch.cli.main import main

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (tmp_path / "out-link").symlink_to(images / "sub")  # the output's own path is a link into the input
    (tmp_path / "parent-link").symlink_to(images)  # a parent of the output is a link to the input
    for output in (tmp_path / "out-link", tmp_path / "parent-link" / "captions", tmp_path / "parent-link"):
        with pytest.raises(ConfigError, match="inside"):
            CaptionConfig(**{**BASE, "input": str(images), "output": str(output)})
    # The other way round: an input reached through a link, the output inside its target.
    with pytest.raises(ConfigError, match="inside"):
        CaptionConfig(
            **{**BASE, "input": str(tmp_path / "parent-link"), "output": str(images / "new" / "out")}
        )
    # Exit 2 with one line from the command.
    argv = ["caption", "--input", str(images), "--output", str(tmp_path / "parent-link" / "captions")]
    assert main([*argv, "--model", "/models/tiny"]) == 2
    # A sibling whose name starts like the input's is not inside it.
    CaptionConfig(**{**BASE, "input": str(images), "output": str(tmp_path / "images-captions")})


def test_quantization_is_checked_and_counts_in_the_fingerprint(monkeypatch):
    with pytest.raises(ConfigError, match="quantization: '3bit' is not one of none, 8bit, 4bit"):
        CaptionConfig(**BASE, quantization="3bit")
    with pytest.raises(ConfigError, match="quantization: '4bit' cannot run with --compile"):
        CaptionConfig(**BASE, quantization="4bit", compile=True)
    from llava_batch.pipeline.config import job_fingerprint

    # 8-bit and 4-bit rows may differ from full precision: an output never mixes them.
    assert job_fingerprint(CaptionConfig(**BASE, quantization="8bit"))["quantization"] == "8bit"
    assert job_fingerprint(CaptionConfig(**BASE))["quantization"] == "none"

    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError) as error:
        CaptionConfig(**BASE, quantization="8bit")
    assert str(error.value).startswith("quantization: '8bit' needs the bitsandbytes package")
    assert "pip install llava-batch[quant]" in str(error.value)
    assert CaptionConfig(**BASE).quantization == "none"  # the default needs nothing
