"""benchmarks/pipeline_vs_single_process.py: the steady-state arithmetic and the summary-line parsing.

The benchmark itself needs a 540 MB model, Ray and SeaweedFS for minutes; here its report is checked on runs
with known numbers, and its parsing on the summary line the pipeline prints.
"""

from __future__ import annotations

import argparse

import pytest

from benchmarks import pipeline_vs_single_process as bench  # noqa: E402
from llava_batch.pipeline.run.progress import replica_time_text  # noqa: E402


def test_steady_rates_ratio_and_caption_agreement():
    texts = {"a": "x", "b": "y"}
    runs = {
        "pipeline": [
            bench.Run("pipeline", 40, 90.0, 50.0, texts, 48.0, 2.0, {"generate_s": 47.5}),
            bench.Run("pipeline", 40, 95.0, 40.0, {"a": "x", "b": "z"}, 40.0, 0.0, {"generate_s": 38.0}),
        ],
        "single": [
            bench.Run("single", 40, 70.0, 50.0, texts, breakdown={"generate_s": 49.0}),
            bench.Run("single", 40, 60.0, 50.0, texts, breakdown={"generate_s": 48.0}),
        ],
    }
    report = bench.summarize(runs, argparse.Namespace(images=40))
    assert report["summary"]["ratios"] == [1.0, 1.25]
    assert report["summary"]["ratio"] == pytest.approx(1.125)
    assert report["summary"]["pipeline_img_s"] == pytest.approx((0.8 + 1.0) / 2)
    # At equal generate speed: (50/49) / (50/47.5) and (50/48) / (40/38); median of the two.
    expected = ((50 / 49) / (50 / 47.5) + (50 / 48) / (40 / 38)) / 2
    assert report["summary"]["ratio_at_equal_generate_speed"] == pytest.approx(expected, abs=1e-4)
    assert report["summary"]["captions_equal"] == 0.75  # one of four compared rows differs
    assert any("start-up + drain" in line for line in report["lines"])


def test_the_replica_line_of_the_summary_is_parsed():
    line = replica_time_text(
        {
            "replicas": 1,
            "busy_s": 51.94,
            "generate_s": 50.0,
            "idle_waiting_for_input_s": 2.4,
            "idle_share": 0.044,
        }
    )
    match = bench.REPLICA_LINE.search(line)
    assert match and (match.group(1), float(match.group(2)), float(match.group(3))) == ("1", 51.9, 2.4)
