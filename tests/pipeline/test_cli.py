"""The `llava-batch` front door without Ray: help derived from the configs, and every wrong setting or
unreachable cluster as ONE line on stderr with its documented exit code (issue 12)."""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import ray

from llava_batch.cli.main import EXIT_CLUSTER_UNREACHABLE, EXIT_INVALID_SETTINGS, build_parser, main
from llava_batch.jobs.caption import CaptionConfig
from llava_batch.jobs.instruct import InstructConfig
from tests.support.cli_output import one_error_line


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


@pytest.mark.parametrize(
    ("command", "config_class"), [("caption", CaptionConfig), ("instruct", InstructConfig)]
)
def test_every_flag_of_a_job_has_help(command, config_class):
    parser = subcommand(command)
    helps = {action.dest: action.help for action in parser._actions}
    settable = [f.name for f in fields(config_class) if f.init]
    missing = [name for name in settable if not helps.get(name)]
    assert not missing, (
        f"flags without help (declare the field with llava_batch.pipeline.config.setting(default, help)): {missing}"
    )
    assert all(action.help for action in parser._actions), "every other option too (--config, --help)"


def test_help_shows_each_default_from_the_dataclass():
    parser = subcommand("caption")
    helps = {action.dest: action.help for action in parser._actions}
    defaults = {f.name: f.default for f in fields(CaptionConfig) if f.init}
    assert helps["batch_size"].endswith(f"(default: {defaults['batch_size']})")
    assert helps["files_per_shard"].endswith("(default: 256)")
    assert helps["prompt"].endswith("(default: Describe this image.)")
    assert helps["share_image_prefix"].endswith("(default: on)") and helps["compile"].endswith(
        "(default: off)"
    )
    assert (
        "image folders" in helps["input"] and "WebDataset" in helps["input"] and "Parquet" in helps["input"]
    )
    assert "CPU" in helps["compile"]
    # argparse renders the whole help without tripping over a % in a default.
    assert "(default: 8)" in " ".join(parser.format_help().split())


def test_other_options_have_help():
    for action in build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):  # the commands: each has its own help
            assert action.help, action.dest
    tiny = subcommand("make-tiny-model")
    assert all(action.help for action in tiny._actions)


BASE_FLAGS = ["--input", "/data/images", "--output", "/data/captions", "--model", "/models/tiny"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "nan"], "temperature: 'nan' is not a finite number"),
        (["--top-p", "inf"], "top_p: 'inf' is not a finite number"),
        (["--batch-size", "3.7"], "batch_size: '3.7' is not a whole number"),
        (["--limit", "ten"], "limit: 'ten' is not a number"),
    ],
)
def test_bad_numbers_fail_before_ray_with_one_line(flags, message, capsys, own_ray):
    assert main(["caption", *BASE_FLAGS, *flags]) == EXIT_INVALID_SETTINGS
    assert one_error_line(capsys) == f"llava-batch: error: {message}"
    assert not ray.is_initialized()


@pytest.mark.parametrize("command", ["caption", "run", "schedule"])
def test_malformed_yaml_config_is_one_line_exit_2(command, tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("input: [a\noutput: b\n")
    assert main([command, "--config", str(path)]) == EXIT_INVALID_SETTINGS
    assert one_error_line(capsys) == (
        f"llava-batch: error: config: {path}: not valid YAML (line 2, column 7: expected ',' or ']', but got ':')"
    )


def test_a_python_tag_in_a_job_file_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("input: !!python/name:os.system\n")
    assert main(["submit", "--config", str(path), "--address", "http://127.0.0.1:9"]) == EXIT_INVALID_SETTINGS
    assert one_error_line(capsys).startswith(
        f"llava-batch: error: config: {path}: not valid YAML (line 1, column 8: "
    )


@pytest.mark.parametrize("job_id", ["", " ", "../jobs", "a b"])
@pytest.mark.parametrize("command", ["status", "logs"])
def test_an_empty_or_odd_job_id_is_one_line_exit_2(command, job_id, capsys):
    assert main([command, job_id, "--address", "http://127.0.0.1:9"]) == EXIT_INVALID_SETTINGS
    assert one_error_line(capsys).startswith(f"llava-batch: error: job_id: {job_id!r} is not a job id")


def test_schedule_with_a_crontab_weekday_range_is_accepted(tmp_path):
    from llava_batch.cli.job_files import load_job_file

    path = tmp_path / "job.yaml"
    path.write_text('schedule: "0 2 * * MON-FRI"\ninput: /data/images\noutput: /data/out\nmodel: /m\n')
    assert load_job_file(path).schedule == "0 2 * * MON-FRI"


# --- a dashboard that answers, but not as it should ------------------------------------------------------------


@contextlib.contextmanager
def fake_dashboard(submit_status: int, submit_body: bytes, version_status: int = 200):
    """Just enough of Ray's dashboard HTTP API for JobSubmissionClient.submit_job."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/api/version" and version_status == 200:
                body = {
                    "version": "4",
                    "ray_version": ray.__version__,
                    "ray_commit": "x",
                    "session_name": "s",
                }
                self.answer(200, json.dumps(body).encode())
            elif self.path == "/api/version":
                self.answer(version_status, b"dashboard broken")
            else:
                self.answer(404, b"not found")  # packages: not uploaded yet

        def do_PUT(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer(200, b"")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer(submit_status, submit_body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def job_file(tmp_path):
    (tmp_path / "images").mkdir()
    path = tmp_path / "job.yaml"
    path.write_text(f"input: {tmp_path / 'images'}\noutput: {tmp_path / 'out'}\nmodel: /models/tiny\n")
    return path


def test_a_dashboard_without_a_job_agent_is_exit_5(job_file, capsys, monkeypatch):
    # submit waits up to AGENT_WAIT_S for an agent that is still starting; this one never comes.
    monkeypatch.setattr("llava_batch.cli.submit.AGENT_WAIT_S", 4.0)
    with fake_dashboard(500, b"No available agent to submit job") as address:
        assert main(["submit", "--config", str(job_file), "--address", address]) == EXIT_CLUSTER_UNREACHABLE
    line = one_error_line(capsys)
    assert line.startswith(
        f"llava-batch: error: the Ray dashboard at {address} answered but cannot run jobs now"
    )
    assert "No available agent to submit job" in line


def test_a_dashboard_failing_its_version_check_is_exit_5(job_file, capsys):
    with fake_dashboard(200, b"{}", version_status=500) as address:
        assert main(["submit", "--config", str(job_file), "--address", address]) == EXIT_CLUSTER_UNREACHABLE
    assert one_error_line(capsys).startswith(
        f"llava-batch: error: the Ray dashboard at {address} did not answer"
    )


def test_the_follow_up_command_names_the_submit_address(job_file, capsys):
    answer = json.dumps({"submission_id": "llava-batch-caption-x1", "job_id": None}).encode()
    with fake_dashboard(200, answer) as address:
        assert (
            main(["--log-level", "warning", "submit", "--config", str(job_file), "--address", address]) == 0
        )
    captured = capsys.readouterr()
    assert captured.out.strip() == "llava-batch-caption-x1"
    assert captured.err.strip() == (
        f"follow it with: llava-batch status llava-batch-caption-x1 --address {address} --wait; "
        f"llava-batch logs llava-batch-caption-x1 --address {address}"
    )


def test_video_files_without_pyav_are_one_line_exit_2(tmp_path, tiny_models, capsys, monkeypatch):
    import sys

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3 not decoded before the check")
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails, as without the `video` extra
    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main([*argv, "--model", str(tiny_models["llava_interleave"])]) == EXIT_INVALID_SETTINGS
    assert one_error_line(capsys) == (
        "llava-batch: error: input: holds video files (clip.webm), which need the av package (PyAV), not "
        "installed in this environment; install it with `pip install llava-batch[video]`"
    )
    assert not (tmp_path / "out").exists()  # refused before any output or cluster work
