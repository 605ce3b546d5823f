"""A --limit/--sample trial run never removes another run's results (pipeline.runner)."""

import pytest

from pipeline.commit import part_name
from pipeline.config import ConfigError
from pipeline.runner import JobPlan, run_job
from pipeline.shards import Shard
from pipeline.storage import StorageOptions


def plan(output, *, trial: bool) -> JobPlan:
    shard = Shard("trial-shard", "/data/in", ("a.jpg",))
    return JobPlan("caption", str(output), StorageOptions(None), [shard], [], {"job": "caption"}, trial=trial)


def test_a_trial_over_other_results_is_refused_and_deletes_nothing(tmp_path):
    full_part = tmp_path / part_name("full-shard")
    full_part.write_bytes(b"a full run's rows")
    with pytest.raises(ConfigError, match=r"holds 1 part\(s\) of shards this trial run .* pass --overwrite"):
        run_job(plan(tmp_path, trial=True))
    assert full_part.read_bytes() == b"a full run's rows"
    assert not (tmp_path / "_lock.json").exists()  # the refusal released the output lock
