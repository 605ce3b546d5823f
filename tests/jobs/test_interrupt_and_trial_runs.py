"""One output through a trial run, a stopped full run and its re-run: a `--sample` run's shards have their own
ids, so the full run redoes them (and removes the trial's parts before writing, so no id is ever there twice);
SIGTERM stops the full run like Ctrl-C (exit 143, summary so far, lock released); the re-run resumes and
every input id ends up exactly once."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.pipeline.run.output_lock import LOCK_FILE
from tests.jobs.test_resume import caption_argv
from tests.support.images import image_bytes

# A trial run, a full run stopped by SIGTERM in a subprocess and its re-run: the slow tier (`make test-slow`).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGES = 25


def output_ids(output) -> list[str]:
    return pq.read_table(output).column("id").to_pylist() if any(output.glob("part-*.parquet")) else []


def test_sample_run_then_sigterm_then_resume_leaves_every_id_once(tmp_path, tiny_models, capsys):
    source, output = tmp_path / "images", tmp_path / "captions"
    source.mkdir()
    names = [f"img-{index:03d}.png" for index in range(IMAGES)]
    for index, name in enumerate(names):
        (source / name).write_bytes(image_bytes(index, (40 + index, 30)))
    # The seed is part of the job's settings: the trial and the full run share it (as in issue 12).
    argv = [*caption_argv(str(source), str(output), str(tiny_models["llava"])), "--seed", "3"]

    # 1. A trial run on a seeded half.
    assert main([*argv, "--sample", "0.5"]) == 0
    sampled = output_ids(output)
    assert 0 < len(sampled) < IMAGES and len(set(sampled)) == len(sampled)
    assert f"rows written      {len(sampled)}" in capsys.readouterr().out

    # 2. The full run, stopped by SIGTERM once it has committed a shard of its own.
    trial_parts = {path.name for path in output.glob("part-*.parquet")}
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        [sys.executable, "-m", "llava_batch.cli.main", *argv],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not {path.name for path in output.glob("part-*.parquet")} - trial_parts:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no shard was committed in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the local Ray's processes, should any be left
        except ProcessLookupError:
            pass
    assert process.returncode == 143, stderr[-3000:]
    assert "llava-batch caption: stopped by SIGTERM; re-run the same command to resume" in stdout
    assert "Traceback" not in stderr
    assert not (output / LOCK_FILE).exists(), "the lock is released"
    assert not trial_parts & {path.name for path in output.glob("part-*.parquet")}, (
        "trial parts removed first"
    )
    stopped = output_ids(output)
    assert len(stopped) < IMAGES and not [i for i, n in Counter(stopped).items() if n > 1], "no id twice"

    # 3. The re-run resumes: every input exactly once.
    assert main(argv) == 0
    assert "already committed" in capsys.readouterr().out
    ids = output_ids(output)
    assert sorted(ids) == names
