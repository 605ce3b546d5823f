"""The replica's decoder is chosen in one place from its settings, and out-of-memory backoff wraps any decoder:
halve the rows decoded at once, retry what is left, remember the size."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from llava_batch.operators.generation.decoders import (
    CONTINUOUS,
    GENERATE,
    SHARED_PREFIX,
    Decoder,
    RowResult,
    choose_decoder,
    with_oom_backoff,
)

MODEL = SimpleNamespace(
    generation_config=GenerationConfig(eos_token_id=2)
)  # all the chooser reads of a model
GREEDY = {"max_new_tokens": 6, "do_sample": False}
# Sampling with a repetition penalty, and beam search: settings the decoding slots do not reproduce.
PENALTY = {"max_new_tokens": 6, "do_sample": True, "temperature": 0.7, "repetition_penalty": 1.3}
BEAMS = {"max_new_tokens": 6, "num_beams": 2}
DISTINCT, SHARED = [b"a", b"b"], [b"a", b"a"]


@pytest.mark.parametrize(
    ("continuous", "compile", "padding", "kwargs", "keys", "kind"),
    [
        (True, False, "left", GREEDY, None, CONTINUOUS),
        (True, False, "left", GREEDY, DISTINCT, CONTINUOUS),  # nothing to share
        (True, False, "left", GREEDY, SHARED, SHARED_PREFIX),  # sharing the prefill saves more
        (True, False, "left", PENALTY, None, GENERATE),
        (True, False, "left", BEAMS, DISTINCT, SHARED_PREFIX),
        (True, True, "left", GREEDY, None, CONTINUOUS),  # compile: in static slots, compiled step
        (True, True, "left", PENALTY, None, GENERATE),  # compile: generate's static cache, compiled step
        (False, True, "left", GREEDY, None, GENERATE),
        (True, True, "left", GREEDY, SHARED, GENERATE),
        (True, False, "right", GREEDY, SHARED, GENERATE),
        (False, False, "left", GREEDY, None, GENERATE),
        (False, False, "left", GREEDY, DISTINCT, SHARED_PREFIX),
    ],
)
def test_the_decoder_kind_follows_from_the_settings(continuous, compile, padding, kwargs, keys, kind):
    choice = choose_decoder(
        MODEL,
        kwargs,
        {2},
        continuous_batching=continuous,
        compile=compile,
        padding_side=padding,
        prefix_keys=keys,
    )
    assert choice.kind == kind
    assert choice.static_slots == (kind == CONTINUOUS and compile)
    if kind == CONTINUOUS:
        assert (choice.settings.max_new_tokens, choice.settings.eos_token_ids) == (6, frozenset({2}))
    else:
        assert choice.settings is None


def rows_of(lengths):
    return [{"input_ids": np.arange(length)} for length in lengths]


def fitting(limit, calls, *, whole_queue=False):
    """A decoder that runs out of memory above `limit` rows at once; its text is each row's id."""

    def run(rows, ids, keys, at_once):
        calls.append((list(ids), at_once))
        if (len(rows) if not whole_queue else at_once) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [RowResult(row_id, len(row["input_ids"]), "stop", None) for row_id, row in zip(ids, rows)]

    return Decoder(GENERATE if not whole_queue else CONTINUOUS, run, whole_queue=whole_queue)


def test_out_of_memory_halves_the_rows_at_once_and_keeps_the_order():
    calls, memory = [], {}
    ids = ["r0", "r1", "r2", "r3", "r4"]
    rows = rows_of([5, 9, 12, 7, 3])  # longest 12: bucket 4
    results = with_oom_backoff(
        fitting(2, calls), rows, ids, None, rows_per_call=None, max_rows_by_length=memory
    )
    assert [call for call, _ in calls] == [ids, ["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert [result.text for result in results] == ids
    assert [result.num_output_tokens for result in results] == [5, 9, 12, 7, 3]
    assert memory == {4: 2}
    calls.clear()
    with_oom_backoff(fitting(2, calls), rows, ids, None, rows_per_call=None, max_rows_by_length=memory)
    assert [len(call) for call, _ in calls] == [2, 2, 1], "the smaller size is kept for similar lengths"
    calls.clear()
    with_oom_backoff(
        fitting(3, calls),
        rows_of([40] * 3),
        ["l0", "l1", "l2"],
        None,
        rows_per_call=None,
        max_rows_by_length=memory,
    )
    assert calls == [(["l0", "l1", "l2"], 3)] and memory == {4: 2}  # longer prompts: another bucket


def test_a_whole_queue_decoder_retries_every_row_with_half_the_slots():
    calls, memory = [], {}
    ids = [f"r{i}" for i in range(5)]
    results = with_oom_backoff(
        fitting(2, calls, whole_queue=True),
        rows_of([4] * 5),
        ids,
        None,
        rows_per_call=4,
        max_rows_by_length=memory,
    )
    assert calls == [(ids, 4), (ids, 2)]
    assert [result.text for result in results] == ids and memory == {3: 2}


def test_prefix_keys_follow_their_rows_into_each_run():
    seen = []

    def run(rows, ids, keys, at_once):
        seen.append(keys)
        if len(rows) > 1:
            raise torch.cuda.OutOfMemoryError("out of memory")
        return [RowResult.failed(f"{ids[0]}:{keys[0]!r}")]

    decoder = Decoder(SHARED_PREFIX, run)
    results = with_oom_backoff(
        decoder, rows_of([2, 2]), ["a", "b"], [b"x", b"y"], rows_per_call=2, max_rows_by_length={}
    )
    assert seen == [[b"x", b"y"], [b"x"], [b"y"]]
    assert results == [(None, None, None, "a:b'x'"), (None, None, None, "b:b'y'")]


def test_out_of_memory_with_one_row_at_once_is_raised():
    calls = []
    with pytest.raises(torch.OutOfMemoryError):
        with_oom_backoff(
            fitting(0, calls), rows_of([3, 3]), ["a", "b"], None, rows_per_call=None, max_rows_by_length={}
        )
    assert [len(call) for call, _ in calls] == [2, 1]
