"""Scheduled runs: ticks process only the shards that arrived since the last run, and overlapping runs are refused."""

import json
import logging
import os
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

import llava_batch.cli.schedule
from llava_batch.cli.main import EXIT_OUTPUT_LOCKED, main
from llava_batch.pipeline.io.storage import StorageOptions
from llava_batch.pipeline.run.output_lock import LOCK_FILE, OutputLock
from tests.support.images import write_images

pytestmark = pytest.mark.integration


def write_job_file(tmp_path, model, *, schedule="*/5 * * * *"):
    path = tmp_path / "job.yaml"
    path.write_text(
        f"job: caption\nschedule: '{schedule}'\n"
        f"input: {tmp_path / 'incoming'}\noutput: {tmp_path / 'captions'}\nmodel: {model}\n"
        "max_new_tokens: 2\nbatch_size: 4\nfiles_per_shard: 2\ngpus_per_replica: 0\n"
    )
    return path


def parts(output):
    return {path.name: path.stat().st_mtime_ns for path in output.glob("part-*.parquet")}


@pytest.mark.slow  # two scheduled runs in a row
def test_two_ticks_process_each_arriving_shard_once(tmp_path, tiny_models, monkeypatch):
    incoming, output = tmp_path / "incoming", tmp_path / "captions"
    write_images(incoming / "2026-11-24", 3)  # two shards: 2 + 1 files
    job = write_job_file(tmp_path, tiny_models["llava"])

    # A clock that jumps to each fire time instead of sleeping; between the ticks a new day's folder arrives.
    clock = {"now": datetime(2026, 11, 25, 3, 2, 30, tzinfo=timezone.utc)}
    fired, after_first = [], {}

    def sleep_until(moment):
        fired.append(moment)
        if len(fired) == 2:
            after_first.update(parts(output))
            assert not (output / LOCK_FILE).exists(), "the first run must release its lock"
            write_images(incoming / "2026-11-25", 2)  # one new shard
        clock["now"] = moment

    monkeypatch.setattr(llava_batch.cli.schedule, "utc_now", lambda: clock["now"])
    monkeypatch.setattr(llava_batch.cli.schedule, "sleep_until", sleep_until)
    assert main(["schedule", "--config", str(job), "--max-runs", "2"]) == 0

    assert fired == [datetime(2026, 11, 25, 3, h, tzinfo=timezone.utc) for h in (5, 10)]
    assert len(after_first) == 2
    now = parts(output)
    assert len(now) == 3
    # The first tick's part files were not rewritten by the second.
    assert {name: now[name] for name in after_first} == after_first
    ids = pq.read_table(output, columns=["id"]).column("id").to_pylist()
    expected = [f"2026-11-24/img-00{i}.{ext}" for i, ext in ((0, "png"), (1, "jpg"), (2, "png"))]
    expected += ["2026-11-25/img-000.png", "2026-11-25/img-001.jpg"]
    assert sorted(ids) == sorted(expected)  # each image exactly once
    counts = json.loads((output / "_manifest.json").read_text())["counts"]
    assert counts["shards_total"] == 3 and counts["shards_skipped"] == 2
    assert counts["rows_written"] == 2 and counts["rows_skipped"] == 3
    assert not (output / LOCK_FILE).exists()


def test_an_overlapping_run_is_refused_while_the_first_holds_the_lock(tmp_path, tiny_models, capsys, caplog):
    write_images(tmp_path / "incoming" / "a", 2)
    job = write_job_file(tmp_path, tiny_models["llava"])
    output = tmp_path / "captions"
    with OutputLock(str(output), StorageOptions()) as first:
        # The one-shot form (system cron) and a plain caption run both stop at once with the owner named.
        assert main(["caption", "--config", str(job)]) == EXIT_OUTPUT_LOCKED
        error = capsys.readouterr().err
        assert f"output is locked by run {first.run_id} (host " in error and f"pid {os.getpid()}" in error
        caplog.set_level(logging.WARNING)
        assert main(["schedule", "--config", str(job), "--once"]) == EXIT_OUTPUT_LOCKED
        assert f"run skipped: output is locked by run {first.run_id}" in caplog.text
        assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE], "no rows may be written"
        assert json.loads((output / LOCK_FILE).read_text())["run_id"] == first.run_id
