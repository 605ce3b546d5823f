"""Values as YAML and flags deliver them (issue 12): numbers that are not finite or not whole, malformed YAML,
and the job fingerprint derived from the config's fields."""

from dataclasses import dataclass

import pytest

from llava_batch.jobs.caption import CaptionConfig
from llava_batch.jobs.caption import fingerprint as caption_fingerprint
from llava_batch.jobs.instruct import InstructConfig
from llava_batch.jobs.instruct import fingerprint as instruct_fingerprint
from llava_batch.pipeline.config import (
    ConfigError,
    fingerprint_defaults,
    job_fingerprint,
    load_config,
    replace,
)
from llava_batch.pipeline.io.storage import StorageOptions
from llava_batch.pipeline.run.commit import check_job_identity

BASE = {"input": "/data/images", "output": "/data/captions", "model": "/models/tiny"}


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["temperature", "top_p", "max_error_rate", "sample"])
def test_float_settings_refuse_nan_and_inf(name, value):
    with pytest.raises(ConfigError, match=rf"^{name}: .* is not a finite number$"):
        load_config(CaptionConfig, None, {**BASE, name: value})


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_yaml_nan_is_refused_with_the_field(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(f"input: /data/images\noutput: /out\nmodel: /m\ntemperature: {text}\n")
    with pytest.raises(ConfigError, match=r"^temperature: .* is not a finite number$"):
        load_config(CaptionConfig, path, {})


def test_a_constructed_config_refuses_nan_too():
    with pytest.raises(ConfigError, match=r"^temperature: nan must be a number"):
        CaptionConfig(**BASE, temperature=float("nan"))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (3.7, "3.7 is not a whole number"),
        ("3.7", "'3.7' is not a whole number"),
        (0.5, "0.5 is not a whole number"),
        (float("nan"), "nan is not a whole number"),
        ("three", "'three' is not a number"),
        (True, "True is not a number"),
    ],
)
@pytest.mark.parametrize("name", ["batch_size", "limit", "max_new_tokens", "seed"])
def test_int_settings_refuse_fractions_instead_of_truncating(name, value, problem):
    with pytest.raises(ConfigError) as error:
        load_config(CaptionConfig, None, {**BASE, name: value})
    assert str(error.value) == f"{name}: {problem}"


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (3.0, 3), ("3", 3), (" 12 ", 12)])
def test_int_settings_take_whole_numbers_in_any_spelling(value, expected):
    assert load_config(CaptionConfig, None, {**BASE, "batch_size": value}).batch_size == expected


def test_yaml_batch_size_3_7_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: /data/images\noutput: /out\nmodel: /m\nbatch_size: 3.7\n")
    with pytest.raises(ConfigError, match=r"^batch_size: 3.7 is not a whole number$"):
        load_config(CaptionConfig, path, {})


def test_optional_fields_keep_their_type():
    config = load_config(
        CaptionConfig, None, {**BASE, "limit": "5", "sample": "0.5", "gpus_per_replica": "0"}
    )
    assert (config.limit, config.sample, config.gpus_per_replica) == (5, 0.5, 0)
    assert load_config(CaptionConfig, None, {**BASE, "keep_columns": "a, b"}).keep_columns == ("a", "b")
    assert load_config(CaptionConfig, None, {**BASE, "compile": "yes"}).compile is True


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("input: [unclosed\noutput: /out\n", "line 2, column 7: expected ',' or ']', but got ':'"),
        ("input: a\n  output: b: c\n", "line 2, column 9: mapping values are not allowed here"),
        ("\tinput: a\n", "line 1, column 1: found character '\\t' that cannot start any token"),
    ],
)
def test_malformed_yaml_is_one_line_naming_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(CaptionConfig, path, {})
    assert str(error.value) == f"config: {path}: not valid YAML ({where})"


def test_a_python_tag_is_refused_not_run(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError) as error:
        load_config(CaptionConfig, path, {})
    assert str(error.value) == (
        f"config: {path}: not valid YAML (line 1, column 8: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system')"
    )
    assert not (tmp_path / "pwned").exists()


def test_a_binary_config_file_is_one_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"input: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"^config: .*job.yaml: not a UTF-8 text file"):
        load_config(CaptionConfig, path, {})


# --- the job fingerprint -------------------------------------------------------------------------------------


def test_keep_columns_changes_the_fingerprint_and_batch_size_does_not():
    config = CaptionConfig(**BASE)
    assert job_fingerprint(replace(config, keep_columns=("caption_hint",))) != job_fingerprint(config)
    for run_only in (
        {"batch_size": 32},
        {"replicas": "1:4"},
        {"preprocess_workers": 4},
        {"length_window": 1},
        {"address": "auto"},
        {"overwrite": True},
        {"output": "/elsewhere"},
        {"max_error_rate": 0.5},
        {
            "limit": 10
        },  # the selection lives in the shard ids (llava_batch.pipeline.io.shards), not in the fingerprint
        {"sample": 0.5},
    ):
        assert job_fingerprint(replace(config, **run_only)) == job_fingerprint(config), run_only
    for counts in ({"files_per_shard": 16}, {"input": "/data/other"}, {"seed": 1}):
        assert job_fingerprint(replace(config, **counts)) != job_fingerprint(config), counts


def test_a_field_added_to_a_config_counts_without_touching_the_fingerprint_code():
    @dataclass
    class WithStyle(CaptionConfig):
        caption_style: str = "plain"

    plain = WithStyle(**BASE)
    assert job_fingerprint(plain)["caption_style"] == "plain"
    assert job_fingerprint(replace(plain, caption_style="poetic")) != job_fingerprint(plain)


def test_job_fingerprints_hold_the_job_the_family_and_redacted_urls():
    config = CaptionConfig(**{**BASE, "input": "s3://user:secret@host/images/"}, keep_columns=("a",))
    model = type("Model", (), {"family": "llava"})()
    printed = caption_fingerprint(config, model)
    assert (printed["job"], printed["family"], printed["keep_columns"]) == ("caption", "llava", ["a"])
    assert printed["input"] == "s3://***@host/images/" and "secret" not in str(printed)
    assert "batch_size" not in printed
    instruct = InstructConfig(**BASE, questions=2, export_json="/data/x.json")
    printed = instruct_fingerprint(instruct, model)
    assert printed["instruction"].startswith("Ask 2 different questions") and "export_json" not in printed


def test_a_changed_keep_columns_is_refused_on_resume_and_an_older_job_file_still_resumes(tmp_path):
    options = StorageOptions(None)
    config = CaptionConfig(**{**BASE, "output": str(tmp_path)})
    defaults = fingerprint_defaults(CaptionConfig)
    check_job_identity(str(tmp_path), job_fingerprint(config), options, overwrite=False, defaults=defaults)
    other = job_fingerprint(replace(config, keep_columns=("source",)))
    with pytest.raises(ConfigError, match=r"changed: keep_columns\); pass --overwrite"):
        check_job_identity(str(tmp_path), other, options, overwrite=False, defaults=defaults)
    # A `_job.json` written before keep_columns, input, ... counted: their defaults (and today's input) are
    # assumed, so the upgrade does not orphan it; a non-default value it cannot vouch for is refused.
    older = {k: v for k, v in job_fingerprint(config).items() if k not in ("keep_columns", "input", "limit")}
    (tmp_path / "_job.json").write_text(__import__("json").dumps(older))
    with pytest.raises(ConfigError, match=r"changed: keep_columns\)"):
        check_job_identity(str(tmp_path), other, options, overwrite=False, defaults=defaults)
    check_job_identity(str(tmp_path), job_fingerprint(config), options, overwrite=False, defaults=defaults)


def test_an_output_made_before_reduced_decoding_existed_counts_as_exact_decoding():
    # Its rows were decoded in full: resuming it with reduced decoding would mix two kinds of rows.
    assert fingerprint_defaults(CaptionConfig)["exact_decode"] is True
    assert CaptionConfig(**BASE).exact_decode is False  # today's default stays reduced decoding
