"""Messages users read: one closing progress line, replica counts that match what ran, the demo's order."""

import logging
from dataclasses import dataclass

import pytest

from llava_batch.pipeline.run.progress import ProgressReporter, summary_text
from llava_batch.pipeline.run.runner import JobResult


@dataclass
class Stats:
    rows: int = 0
    shards: int = 0
    errors: int = 0


def test_the_last_progress_line_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="llava_batch.progress")
    reporter = ProgressReporter("caption", total_rows=4, total_shards=2, interval=0.0)
    reporter.update(Stats(2, 1))
    reporter.update(Stats(4, 2))  # the loop's last regular update ...
    reporter.update(Stats(4, 2), force=True)  # ... and the closing one, with nothing new
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(" | ")[0] for line in lines] == ["[caption] 2/4 rows", "[caption] 4/4 rows"]
    reporter.interval = 60.0
    reporter.update(Stats(5, 3))  # not yet due ...
    reporter.update(Stats(5, 3), force=True)  # ... so the closing line reports it
    assert caplog.records[-1].getMessage().startswith("[caption] 5/4 rows")


def result(**replica_time) -> JobResult:
    times = {"busy_s": 1.0, "idle_waiting_for_input_s": 0.5, "idle_share": 1 / 3, "image_prefills_saved": 0}
    return JobResult("caption", "/out", 4, 0, {}, 0, 0, 2.0, 8, replica_time={**times, **replica_time})


@pytest.mark.parametrize(
    ("replica_time", "shown"),
    [
        ({"replicas": 1}, "model replicas    1: busy"),  # before pools were recorded (and one replica)
        ({"replicas": 2, "replicas_planned": 2, "pools": {"generate": 2}}, "model replicas    2: busy"),
        (
            {"replicas": 1, "replicas_planned": 2, "pools": {"generate": 2}},
            "model replicas    2 (1 reported its time): busy",
        ),
        (  # instruct: one pool per model call
            {"replicas": 1, "replicas_planned": 2, "pools": {"generate-questions": 1, "generate-turn1": 1}},
            "model replicas    2 in 2 pools (1 reported its time): busy",
        ),
    ],
)
def test_the_summary_counts_the_replicas_that_ran(replica_time, shown):
    assert shown in summary_text(result(**replica_time))


def test_the_demo_prints_its_summary_before_the_truth_table(tmp_path, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import llava_batch.jobs.demo as demo

    def fake_run(config):
        rows = [{"id": name, "generated_text": "x", "error": None} for name in sorted(config_expected)]
        (tmp_path / "captions").mkdir()
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "captions" / "part-0.parquet")
        return result(replicas=1)

    config_expected = demo.write_demo_images(tmp_path / "probe")[1]
    monkeypatch.setattr(demo, "run_caption", fake_run)
    monkeypatch.setattr(demo, "shutdown", lambda: None)
    assert demo.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.index("llava-batch caption: done") < out.index("true answer") < out.index("captions match")
    assert out.rstrip().endswith("to look.")
