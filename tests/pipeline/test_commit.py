import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.formats.images import plan_image_shards
from llava_batch.pipeline.io.shards import shard_id_for
from llava_batch.pipeline.io.storage import StorageOptions
from llava_batch.pipeline.run.commit import (
    OUTPUT_SCHEMA,
    ShardCommitter,
    check_job_identity,
    committed_shard_ids,
    part_name,
)

OPTIONS = StorageOptions()


def result_rows(shard_id, ids, expected, errors=None):
    errors = errors or [None] * len(ids)
    return pa.table(
        {
            "id": ids,
            "source": [f"/in/{i}" for i in ids],
            "shard_id": [shard_id] * len(ids),
            "shard_rows": [expected] * len(ids),
            "generated_text": [None if e else f"text {i}" for i, e in zip(ids, errors)],
            "num_output_tokens": [None if e else 3 for e in errors],
            "error": errors,
        }
    )


def test_a_shard_is_written_only_when_all_its_rows_arrived(tmp_path):
    committer = ShardCommitter(str(tmp_path), OPTIONS)
    committer.add(result_rows("s1", ["b.png"], expected=2))
    assert committed_shard_ids(str(tmp_path), OPTIONS) == set()
    assert committer.incomplete_shards() == {"s1": (1, 2)}
    committer.add(result_rows("s1", ["a.png"], expected=2, errors=["decode: empty file (0 bytes)"]))
    assert committed_shard_ids(str(tmp_path), OPTIONS) == {"s1"}
    table = pq.read_table(tmp_path / part_name("s1"))
    assert table.schema.names[: len(OUTPUT_SCHEMA)] == OUTPUT_SCHEMA.names
    assert "shard_rows" not in table.schema.names
    assert table.column("id").to_pylist() == ["a.png", "b.png"]
    assert table.column("error").to_pylist() == ["decode: empty file (0 bytes)", None]
    assert committer.stats.rows == 2 and committer.stats.errors == 1
    assert committer.stats.errors_by_kind == {"decode": 1}
    assert committer.incomplete_shards() == {}


def test_a_block_mixing_two_shards_commits_both(tmp_path):
    committer = ShardCommitter(str(tmp_path), OPTIONS)
    committer.add(pa.concat_tables([result_rows("s1", ["a"], 1), result_rows("s2", ["b", "c"], 2)]))
    assert committed_shard_ids(str(tmp_path), OPTIONS) == {"s1", "s2"}
    assert pq.read_table(tmp_path).num_rows == 3


def test_duplicate_ids_in_a_shard_are_refused(tmp_path):
    committer = ShardCommitter(str(tmp_path), OPTIONS)
    with pytest.raises(RuntimeError, match="refusing to commit"):
        committer.add(result_rows("s1", ["a", "a"], expected=2))
    assert committed_shard_ids(str(tmp_path), OPTIONS) == set()


def test_no_temporary_files_are_left_behind(tmp_path):
    ShardCommitter(str(tmp_path), OPTIONS).add(result_rows("s1", ["a"], 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [part_name("s1")]


def test_job_identity_refuses_other_settings_unless_overwriting(tmp_path):
    check_job_identity(str(tmp_path), {"prompt": "a"}, OPTIONS, overwrite=False)
    check_job_identity(str(tmp_path), {"prompt": "a"}, OPTIONS, overwrite=False)
    with pytest.raises(ConfigError, match="changed: prompt.*--overwrite"):
        check_job_identity(str(tmp_path), {"prompt": "b"}, OPTIONS, overwrite=False)
    check_job_identity(str(tmp_path), {"prompt": "b"}, OPTIONS, overwrite=True)
    assert json.loads((tmp_path / "_job.json").read_text()) == {"prompt": "b"}


def test_shards_are_stable_sorted_chunks_of_image_files(tmp_path):
    for name in ["c.jpg", "a.PNG", "b.webp", "notes.txt", "sub/d.tiff"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    shards = plan_image_shards(str(tmp_path), OPTIONS, files_per_shard=3)
    assert [shard.members for shard in shards] == [("a.PNG", "b.webp", "c.jpg"), ("sub/d.tiff",)]
    assert shards[0].shard_id == shard_id_for(("a.PNG", "b.webp", "c.jpg"))
    assert [s.shard_id for s in plan_image_shards(str(tmp_path), OPTIONS, 3)] == [s.shard_id for s in shards]


def test_missing_input_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_image_shards(str(tmp_path / "nope"), OPTIONS, 3)


def test_an_empty_shard_is_committed_as_an_empty_file(tmp_path):
    committer = ShardCommitter(str(tmp_path), OPTIONS)
    marker = result_rows("s0", ["s0#empty"], expected=0, errors=["empty shard (marker row, not written)"])
    committer.add(marker)
    committer.add(marker)  # one marker per prompt may arrive
    assert committed_shard_ids(str(tmp_path), OPTIONS) == {"s0"}
    assert pq.read_table(tmp_path / part_name("s0")).num_rows == 0
    assert committer.stats.rows == 0 and committer.stats.errors == 0


def test_rows_for_an_already_committed_shard_are_refused(tmp_path):
    committer = ShardCommitter(str(tmp_path), OPTIONS)
    committer.add(result_rows("s1", ["a"], expected=1))
    with pytest.raises(RuntimeError, match="after it was committed"):
        committer.add(result_rows("s1", ["a"], expected=1))


def test_temporary_files_of_a_killed_run_are_removed(tmp_path):
    from llava_batch.pipeline.run.commit import remove_temporary_files

    (tmp_path / ".tmp-abc-part-s1.parquet").write_bytes(b"half")
    (tmp_path / "part-s2.parquet").write_bytes(b"kept")
    remove_temporary_files(str(tmp_path), OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-s2.parquet"]


def question_rows(shard_id, inputs, shard_inputs):
    """Rows of an instruct shard: `inputs` maps input id -> (question numbers here, rows that input became)."""
    ids, input_ids, input_rows = [], [], []
    for input_id, (numbers, total) in inputs.items():
        for number in numbers:
            ids.append(f"{input_id}#q{number}")
            input_ids.append(input_id)
            input_rows.append(total)
    table = result_rows(shard_id, ids, shard_inputs)
    return table.append_column("input_id", pa.array(input_ids)).append_column(
        "input_rows", pa.array(input_rows)
    )


def test_a_shard_whose_inputs_expand_to_unknown_row_counts_waits_for_every_input(tmp_path):
    committer = ShardCommitter(str(tmp_path), OPTIONS)
    # Two inputs in the shard: a.png became 3 rows, b.png 1; their rows arrive spread over three blocks.
    committer.add(question_rows("s1", {"a.png": ([1, 2], 3)}, shard_inputs=2))
    assert committer.incomplete_shards() == {"s1": (2, None)}  # b.png not seen yet: the total is unknown
    committer.add(question_rows("s1", {"b.png": ([1], 1)}, shard_inputs=2))
    assert committer.incomplete_shards() == {"s1": (3, 4)}
    assert committed_shard_ids(str(tmp_path), OPTIONS) == set()
    committer.add(question_rows("s1", {"a.png": ([3], 3)}, shard_inputs=2))
    assert committed_shard_ids(str(tmp_path), OPTIONS) == {"s1"}
    table = pq.read_table(tmp_path / part_name("s1"))
    assert table.column("id").to_pylist() == ["a.png#q1", "a.png#q2", "a.png#q3", "b.png#q1"]
    assert "input_rows" not in table.schema.names and committer.stats.rows == 4
    with pytest.raises(RuntimeError, match="after it was committed"):
        committer.add(question_rows("s1", {"a.png": ([1], 3)}, shard_inputs=2))


def test_replica_time_is_summed_over_batches_and_not_written(tmp_path):
    committer = ShardCommitter(str(tmp_path), OPTIONS)
    stats = [
        {"replica": "a", "busy_s": 2.0, "idle_s": 0.5, "generate_s": 1.5, "prefills_saved": 4},
        {
            "replica": "b",
            "busy_s": 3.0,
            "idle_s": 1.5,
            "generate_s": 2.5,
            "prefills_saved": 0,
            "decode_row_steps": 30,
            "decode_slot_steps": 40,
            "memory_bytes": 878088,
        },
        {"replica": "a", "busy_s": 1.0, "idle_s": 0.0, "generate_s": 0.5},  # written before the field existed
    ]
    for index, shard_id in enumerate(["s1", "s2"]):
        rows = result_rows(shard_id, [f"{shard_id}-x", f"{shard_id}-y"], expected=2)
        column = [json.dumps(stats[index]), None] if index == 0 else [json.dumps(s) for s in stats[1:]]
        committer.add(rows.append_column("_replica_stats", pa.array(column, pa.string())))
    assert committer.stats.replicas.to_dict() == {
        "replicas": 2,
        "busy_s": 6.0,
        "generate_s": 4.5,
        "idle_waiting_for_input_s": 2.0,
        "idle_share": 0.25,
        "image_prefills_saved": 4,
        "decode_slots_filled": 0.75,
        "model_memory_bytes": 878088,
    }
    for shard_id in ("s1", "s2"):
        assert "_replica_stats" not in pq.read_table(tmp_path / part_name(shard_id)).schema.names
