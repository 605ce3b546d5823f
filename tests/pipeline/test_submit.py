"""`llava-batch submit / status / logs` against a real Ray head (dashboard + Job Submission API) on loopback."""

import logging
import re
import time

import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import EXIT_CLUSTER_UNREACHABLE, main
from llava_batch.cli.submit import entrypoint_for
from tests.support.images import write_images
from tests.support.ray_head import free_port, run_ray_head

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_head(shared_ray_session):
    # The tests' shared local Ray would hold the dashboard agent's port, and the head's job agent would never
    # come up ("No available agent to submit job"): it is stopped first, and the tests here ask for `own_ray`.
    shared_ray_session.stop()
    with run_ray_head(num_cpus=2) as url:
        yield url


@pytest.mark.slow  # a real Ray head with its dashboard
def test_a_caption_job_runs_on_the_cluster(ray_head, own_ray, tmp_path, tiny_models, capsys):
    names = write_images(tmp_path / "images", 3)
    output = tmp_path / "captions"
    job = tmp_path / "my job.yaml"  # a space in the name: nothing of it may reach the shell unquoted
    job.write_text(
        f"job: caption\ninput: {tmp_path / 'images'}\noutput: {output}\nmodel: {tiny_models['llava']}\n"
        "max_new_tokens: 2\nbatch_size: 4\ngpus_per_replica: 0\n"
    )
    # An env var reaches the job through the runtime_env: the job logs at DEBUG (one line per committed shard).
    argv = ["submit", "--config", str(job), "--address", ray_head, "--env", "LLAVA_BATCH_LOG_LEVEL=DEBUG"]
    assert main(argv) == 0
    job_id = capsys.readouterr().out.strip()
    assert job_id.startswith("llava-batch-caption-")

    # --follow streams the logs until the job ends, and exits 0 only when it SUCCEEDED.
    follow = main(["logs", job_id, "--address", ray_head, "--follow"])
    captured = capsys.readouterr()
    assert follow == 0, captured.out[-3000:]
    assert f"llava-batch: job {job_id} ended SUCCEEDED" in captured.err
    assert re.search(
        r"DEBUG llava_batch\.pipeline\.run\.commit: committed shard \S+ \(3 rows\)", captured.out
    )
    assert main(["logs", job_id, "--address", ray_head]) == 0
    logs = capsys.readouterr().out
    assert "rows written      3" in logs and "rows with errors  0" in logs
    assert sorted(pq.read_table(output, columns=["id"]).column("id").to_pylist()) == sorted(names)
    # Stopping a job that has ended changes nothing and says so.
    assert main(["stop", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id} had already ended: SUCCEEDED"
    assert main(["status", job_id, "--address", ray_head, "--wait"]) == 0
    assert capsys.readouterr().out.startswith(f"{job_id} SUCCEEDED")


@pytest.mark.slow
def test_schedule_once_submits_to_the_cluster_with_this_checkouts_code(
    ray_head, own_ray, tmp_path, tiny_models, caplog
):
    # The CronJob form: one tick, submitted, waited for; --ship-code builds a wheel of this checkout and the job
    # installs it (runtime_env pip).
    names = write_images(tmp_path / "images" / "day-1", 2)
    output = tmp_path / "captions"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"schedule: '0 3 * * *'\ninput: {tmp_path / 'images'}\noutput: {output}\nmodel: {tiny_models['llava']}\n"
        "max_new_tokens: 2\ngpus_per_replica: 0\n"
    )
    caplog.set_level(logging.INFO, logger="llava_batch")
    argv = ["schedule", "--config", str(job), "--once", "--address", ray_head, "--ship-code"]
    assert main(argv) == 0
    assert re.search(r"cluster job llava-batch-caption-\S+ ended SUCCEEDED", caplog.text)
    ids = pq.read_table(output, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(f"day-1/{name}" for name in names)


@pytest.mark.slow
def test_a_missing_job_id_is_a_clear_error(ray_head, own_ray, capsys):
    assert main(["status", "no-such-job", "--address", ray_head]) == 2
    assert f"job_id: no job 'no-such-job' on {ray_head}" in capsys.readouterr().err
    assert main(["logs", "no-such-job", "--address", ray_head]) == 2


def test_entrypoint_quotes_every_piece():
    assert entrypoint_for() == "llava-batch run --config job.yaml"
    assert entrypoint_for("x; rm -rf /") == "llava-batch run --config 'x; rm -rf /'"


def test_an_unreachable_cluster_fails_fast_with_a_clear_message(tmp_path, tiny_models, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\nmodel: {tiny_models['llava']}\n")
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    assert main(["submit", "--config", str(job), "--address", address]) == EXIT_CLUSTER_UNREACHABLE
    assert main(["status", "some-job", "--address", address]) == EXIT_CLUSTER_UNREACHABLE
    assert time.monotonic() - started < 5
    error = capsys.readouterr().err
    assert f"cannot reach the Ray dashboard at {address}" in error and "ray dashboard cluster.yaml" in error


def test_an_address_that_is_not_a_dashboard_url_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["status", "some-job"]) == 2
    assert "pass --address http://HEAD:8265" in capsys.readouterr().err
    assert main(["status", "some-job", "--address", "ray://head:10001"]) == 2
    assert "is not a dashboard URL" in capsys.readouterr().err
