"""Shard ids: a --sample trial run's shards are kept apart from a full run's (their own ids, per fraction and
seed), so a later full run does not take a sampled shard as done."""

from llava_batch.pipeline.io.shards import Shard, shard_id_for, with_sample_ids


def shards() -> list[Shard]:
    return [
        Shard(shard_id_for((f"a{i}.png", f"b{i}.png")), "/in", (f"a{i}.png", f"b{i}.png")) for i in range(3)
    ]


def test_sampled_shards_get_their_own_ids_per_fraction_and_seed():
    full = shards()
    assert with_sample_ids(full, None, 3) == full
    half_3 = with_sample_ids(full, 0.5, 3)
    assert [shard.members for shard in half_3] == [shard.members for shard in full]
    ids = {shard.shard_id for shard in full}
    assert not ids & {shard.shard_id for shard in half_3}
    assert len({shard.shard_id for shard in half_3}) == 3
    # The same trial planned again keeps its ids (a re-run resumes it); another seed or fraction does not.
    assert [s.shard_id for s in with_sample_ids(shards(), 0.5, 3)] == [s.shard_id for s in half_3]
    assert not {s.shard_id for s in with_sample_ids(full, 0.5, 4)} & {s.shard_id for s in half_3}
    assert not {s.shard_id for s in with_sample_ids(full, 0.25, 3)} & {s.shard_id for s in half_3}
