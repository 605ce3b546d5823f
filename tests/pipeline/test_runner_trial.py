"""A --limit/--sample trial run never removes another run's results (llava_batch.pipeline.run.runner)."""

import pytest

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.shards import Shard
from llava_batch.pipeline.io.storage import StorageOptions
from llava_batch.pipeline.run.commit import part_name
from llava_batch.pipeline.run.runner import JobPlan, run_job


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
