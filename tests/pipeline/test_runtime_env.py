"""The runtime_env `llava-batch submit` sends (llava_batch.cli.submit.build_runtime_env), and the warning for local
paths on a cluster; no cluster needed."""

import json
import logging

import pytest

from llava_batch.cli.main import build_parser, main
from llava_batch.cli.submit import (
    WORKING_DIR_VAR,
    RuntimeEnvOptions,
    build_runtime_env,
    parse_env_vars,
)
from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.run.ray_cluster import local_path_problem, remote_address


def test_flags_alone_give_pip_env_vars_and_the_staging_working_dir(tmp_path):
    options = RuntimeEnvOptions(pip=("emoji==2.0",), env_vars={"HF_HOME": "/cache"})
    env = build_runtime_env(tmp_path, options)
    assert env == {"working_dir": str(tmp_path), "pip": ["emoji==2.0"], "env_vars": {"HF_HOME": "/cache"}}


def test_a_file_is_merged_under_the_flags_and_keeps_its_pip_options(tmp_path):
    file = tmp_path / "env.yaml"
    file.write_text(
        "pip:\n  packages: [requests]\n  pip_check: false\nenv_vars: {A: '1', B: '2'}\nexcludes: ['*.ckpt']\n"
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    options = RuntimeEnvOptions(file=str(file), pip=("emoji",), env_vars={"B": "3"})
    env = build_runtime_env(staging, options)
    assert env == {
        "working_dir": str(staging),
        "pip": {"packages": ["requests", "emoji"], "pip_check": False},
        "env_vars": {"A": "1", "B": "3"},
        "excludes": ["*.ckpt"],
    }


def test_a_json_file_is_read_too_and_its_working_dir_is_copied_into_the_staging_folder(tmp_path):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "sub" / "prompts.txt").write_text("hello\n")
    file = tmp_path / "env.json"
    file.write_text(json.dumps({"working_dir": str(mine), "env_vars": {"X": 5}}))
    staging = tmp_path / "staging"
    staging.mkdir()
    env = build_runtime_env(staging, RuntimeEnvOptions(file=str(file)))
    assert env == {"working_dir": str(staging), "env_vars": {"X": "5"}}
    assert (staging / "sub" / "prompts.txt").read_text() == "hello\n"


def test_a_shipped_wheel_is_a_pip_package_from_the_unpacked_working_dir(tmp_path):
    wheel = tmp_path / "wheels" / "llava_batch-0.1.0-py3-none-any.whl"
    env = build_runtime_env(tmp_path, RuntimeEnvOptions(pip=("emoji",)), wheel)
    assert env["pip"] == ["emoji", f"{WORKING_DIR_VAR}/wheels/llava_batch-0.1.0-py3-none-any.whl"]
    assert WORKING_DIR_VAR == "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- a\n- b\n", "must hold a mapping (working_dir, pip, env_vars, ...), not list"),
        ("pip: {a: [\n", "is not valid YAML or JSON"),
        ("pip: 3\n", "pip must be a list of packages or a mapping with `packages`, not 3"),
        ("working_dir: s3://bucket/code.zip\n", "is a remote URI"),
    ],
)
def test_a_bad_runtime_env_file_is_a_config_error_naming_what_is_wrong(tmp_path, content, message):
    file = tmp_path / "env.yaml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=r"^(runtime_env|working_dir): ") as error:
        build_runtime_env(tmp_path, RuntimeEnvOptions(file=str(file)))
    assert message in str(error.value)


def test_env_flags_must_be_name_equals_value():
    assert parse_env_vars(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    for bad in ("A", "=1", "1A=2"):
        with pytest.raises(ConfigError, match=f"^env: '{bad}' is not NAME=VALUE$"):
            parse_env_vars([bad])


def test_submit_refuses_a_bad_env_flag_before_reaching_any_cluster(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("input: s3://b/in\noutput: s3://b/out\nmodel: builtin:llava\n")
    code = main(["submit", "--config", str(job), "--address", "http://127.0.0.1:1", "--env", "NOPE"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "llava-batch: error: env: 'NOPE' is not NAME=VALUE"


def test_cluster_commands_parse():
    parser = build_parser()
    args = parser.parse_args(["logs", "job-1", "--follow", "--address", "http://h:8265"])
    assert (args.job_id, args.follow, args.address) == ("job-1", True, "http://h:8265")
    args = parser.parse_args(["stop", "job-1"])
    assert args.job_id == "job-1" and args.address is None
    argv = ["submit", "--config", "j.yaml", "--pip", "a", "--pip", "b", "--env", "K=V", "--working-dir", "d"]
    args = parser.parse_args([*argv, "--runtime-env", "e.yaml", "--ship-code"])
    assert (args.pip, args.env, args.working_dir, args.runtime_env, args.ship_code) == (
        ["a", "b"],
        ["K=V"],
        "d",
        "e.yaml",
        True,
    )


@pytest.mark.parametrize(
    ("address", "remote"),
    [
        (None, False),
        ("127.0.0.1:6379", False),
        ("ray://localhost:10001", False),
        ("ray://head.example:10001", True),
        ("10.0.0.5:6379", True),
        ("auto", True),
    ],
)
def test_remote_address(address, remote):
    assert remote_address(address) is remote


def test_local_paths_are_named_as_a_problem_on_a_cluster_and_stores_are_not():
    assert local_path_problem("input", "s3://bucket/images") is None
    assert local_path_problem("input", "gs://bucket/images") is None
    problem = local_path_problem("input", "/data/images")
    assert problem.startswith(
        "input: '/data/images' is a path on a local disk, but the job runs on a cluster"
    )
    assert "use s3://bucket/prefix" in problem
    assert local_path_problem("output", "file:///tmp/out").startswith("output: 'file:///tmp/out' is a path")


def test_a_job_joining_a_remote_cluster_warns_about_a_local_input_before_ray_starts(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from llava_batch.jobs.caption import CaptionConfig
    from llava_batch.jobs.common import warn_local_input

    caplog.set_level(logging.WARNING, logger="llava_batch")
    config = CaptionConfig(
        input=str(tmp_path), output="s3://b/out", model="builtin:llava", address="ray://h:10001"
    )
    warn_local_input(config)
    assert f"input: {str(tmp_path)!r} is a path on a local disk" in caplog.text
    caplog.clear()
    warn_local_input(
        CaptionConfig(input="s3://b/in", output="s3://b/out", model="builtin:llava", address="h:6379")
    )
    warn_local_input(CaptionConfig(input=str(tmp_path), output="s3://b/out", model="builtin:llava"))
    assert caplog.text == ""


def test_a_local_input_is_warned_about_when_the_joined_cluster_has_nodes_on_other_machines(tmp_path, caplog):
    from llava_batch.jobs.caption import CaptionConfig
    from llava_batch.jobs.common import warn_local_input_on_other_machines
    from llava_batch.pipeline.run.ray_cluster import ClusterResources

    caplog.set_level(logging.WARNING, logger="llava_batch")
    config = CaptionConfig(
        input=str(tmp_path), output="s3://b/out", model="builtin:llava", address="127.0.0.1:6379"
    )
    spread = ClusterResources(
        4, 2, False, node_addresses=("127.0.0.1", "10.0.0.5", "10.0.0.6"), driver_address="127.0.0.1"
    )
    assert spread.other_machines() == ["10.0.0.5", "10.0.0.6"]
    warn_local_input_on_other_machines(config, spread)
    assert f"input: {str(tmp_path)!r} is a path on a local disk" in caplog.text
    assert "(nodes on other machines: 10.0.0.5, 10.0.0.6)" in caplog.text
    caplog.clear()
    # One machine (a local Ray, or the loopback test clusters), or an input every node reaches: no warning.
    here = ClusterResources(
        4, 2, False, node_addresses=("127.0.0.1", "127.0.0.1"), driver_address="127.0.0.1"
    )
    warn_local_input_on_other_machines(config, here)
    s3 = CaptionConfig(input="s3://b/in", output="s3://b/out", model="builtin:llava")
    warn_local_input_on_other_machines(s3, spread)
    assert caplog.text == ""
