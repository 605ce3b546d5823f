"""The model operator: per-prompt decoding overrides, finish reasons, and out-of-memory split-and-retry."""

import json
import time

import numpy as np
import pytest
import torch

from llava_batch.operators.generation.replica import (
    REPLICA_STATS_COLUMN,
    Generate,
    ReplicaClock,
    merge_generation,
)
from llava_batch.operators.preprocess import PreprocessForModel
from tests.support.images import SIZES, image_bytes

GREEDY = {"max_new_tokens": 6, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}


@pytest.fixture(scope="module")
def llava(tiny_models):
    model = str(tiny_models["llava"])
    return PreprocessForModel(model, max_image_pixels=10**8), Generate(
        model, generate_kwargs=GREEDY, dtype="float32"
    )


def prepared(preprocess, count=4):
    data = np.empty(count, dtype=object)
    data[:] = [image_bytes(i, SIZES[i]) for i in range(count)]
    ids = np.array([f"r{i}" for i in range(count)], dtype=object)
    return preprocess(
        {"id": ids, "image_bytes": data, "prompt": np.array(["What is it?"] * count, dtype=object)}
    )


def test_merge_generation_switches_between_greedy_and_sampling():
    sampled = merge_generation(GREEDY, {"temperature": 0.7, "max_new_tokens": 3})
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_p"], sampled["max_new_tokens"]) == (
        True,
        0.7,
        1.0,
        3,
    )
    back = merge_generation(sampled, {"temperature": 0})
    assert back["do_sample"] is False and back["temperature"] is None


def test_per_row_max_new_tokens_override(llava):
    preprocess, generate = llava
    batch = prepared(preprocess, 2)
    batch["generation"] = np.array([json.dumps({"max_new_tokens": 2}), None], dtype=object)
    out = generate(batch)
    assert out["num_output_tokens"][0] <= 2
    assert out["finish_reason"][0] in ("stop", "length")
    plain = generate({name: values[1:] for name, values in prepared(preprocess, 2).items()})
    assert out["generated_text"][1] == plain["generated_text"][0]


# Where a call meets the model: `model.generate` (plain batches) or the model's forward calls, of which those with
# pixels are prefills (continuous batching, operators/generation/continuous_batching.py).
ENTRY = {"generate": "generate", "continuous": "forward"}


@pytest.mark.parametrize("mode", ["generate", "continuous"])
def test_out_of_memory_splits_the_batch_and_remembers_the_size(llava, monkeypatch, mode):
    preprocess, generate = llava
    batch = prepared(preprocess, 4)
    expected = generate(batch)["generated_text"].tolist()
    monkeypatch.setattr(generate, "continuous_batching", mode == "continuous")
    real = getattr(generate.model, ENTRY[mode])
    calls = []

    def model_that_fits_two_rows(*args, **kwargs):
        if mode == "generate" or kwargs.get("pixel_values") is not None:
            calls.append(kwargs["input_ids"].shape[0])
            if kwargs["input_ids"].shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate.model, ENTRY[mode], model_that_fits_two_rows)
    generate.max_rows_by_length.clear()
    assert generate(batch)["generated_text"].tolist() == expected
    # Continuous batching retries with 2 slots; its 2 rows of the second prefill joined when the first 2 ended.
    assert calls == [4, 2, 2]
    calls.clear()
    assert generate(batch)["generated_text"].tolist() == expected
    assert calls == [2, 2], "the replica keeps the smaller size for similar batches"


@pytest.mark.parametrize("mode", ["generate", "continuous"])
# A NotImplementedError from the model ends as error rows too: it is not taken for a cache that continuous
# batching cannot rearrange (which sends the call to model.generate), nor retried.
@pytest.mark.parametrize("failure", [RuntimeError, NotImplementedError])
def test_a_batch_that_fails_becomes_error_rows(llava, monkeypatch, mode, failure):
    preprocess, generate = llava
    batch = prepared(preprocess, 2)
    monkeypatch.setattr(generate, "continuous_batching", mode == "continuous")

    def broken(*args, **kwargs):
        raise failure("device lost")

    monkeypatch.setattr(generate.model, ENTRY[mode], broken)
    out = generate(batch)
    assert out["error"].tolist() == [f"generate: {failure.__name__}: device lost"] * 2
    assert out["generated_text"].tolist() == [None, None]


def test_image_count_must_match_the_prompt(llava):
    preprocess, _ = llava
    data = np.empty(2, dtype=object)
    data[0] = [image_bytes(0, (40, 30)), image_bytes(1, (30, 40))]
    data[1] = [image_bytes(2, (40, 30))]
    prompts = np.array(["Compare <image> and <image>.", "Compare <image> and <image>."], dtype=object)
    out = preprocess({"id": np.array(["a", "b"], dtype=object), "image_bytes": data, "prompt": prompts})
    assert out["error"][0] is None and out["num_image_tokens"][0] == 2 * 16
    assert out["error"][1] == "preprocess: the prompt has 2 image placeholder(s) but the row has 1 image(s)"


def test_replica_clock_counts_idle_between_calls_and_busy_within_them():
    clock = ReplicaClock(now=100.0)  # model loaded at t=100
    idle = clock.start_call(now=103.0)  # first batch arrives 3 s later
    clock.generate_s += 1.5
    first = clock.end_call(idle, now=105.0)
    assert (first["idle_s"], first["busy_s"], first["generate_s"]) == (3.0, 2.0, 1.5)
    idle = clock.start_call(now=105.25)
    second = clock.end_call(idle, now=106.0)
    assert (second["idle_s"], second["busy_s"], second["generate_s"]) == (0.25, 0.75, 0.0)
    assert first["replica"] == second["replica"] != ReplicaClock().replica_id


def test_each_batch_reports_its_replica_time_on_its_first_row(llava):
    preprocess, generate = llava
    batch = prepared(preprocess, count=3)
    first = generate(batch)
    time.sleep(0.3)  # the replica waits for its next input
    second = generate(batch)
    for out in (first, second):
        assert out[REPLICA_STATS_COLUMN][1:].tolist() == [None, None]
    first_stats, second_stats = (json.loads(out[REPLICA_STATS_COLUMN][0]) for out in (first, second))
    assert first_stats["replica"] == second_stats["replica"]
    assert 0 < second_stats["generate_s"] <= second_stats["busy_s"]
    assert second_stats["prefills_saved"] == 0  # three different images
    assert 0.3 <= second_stats["idle_s"] < 0.3 + first_stats["busy_s"] + 1.0
    assert list(second["generated_text"]) == list(first["generated_text"])


def test_compile_runs_generate_on_a_static_cache_through_the_compiled_step(tiny_models, llava, monkeypatch):
    """The plumbing of --compile where `model.generate` runs (here: continuous batching off; with it on, static
    slots run, tests/operators/test_continuous_batching.py), and that a static cache gives the same text.
    Compiling itself takes over a minute on this CPU for a tiny model, so the compiled step is recorded here, not
    compiled (checked by hand: the compiled run gave the same texts)."""
    from transformers.cache_utils import StaticCache

    preprocess, plain = llava
    compiled = Generate(
        str(tiny_models["llava"]),
        generate_kwargs=GREEDY,
        dtype="float32",
        compile=True,
        continuous_batching=False,
    )
    config = compiled.model.generation_config
    assert config.cache_implementation == "static"
    assert config.compile_config.mode == "default" and config.compile_config._compile_all_devices  # CPU
    caches = []

    def record_compiled_call(compile_config):
        caches.append(compile_config)
        return compiled.model.__call__  # what torch.compile would wrap

    monkeypatch.setattr(compiled.model, "get_compiled_call", record_compiled_call)
    original_criteria = type(compiled.model)._valid_auto_compile_criteria

    def criteria(model_kwargs, generation_config):
        caches.append(type(model_kwargs.get("past_key_values") or model_kwargs.get("cache")))
        return original_criteria(compiled.model, model_kwargs, generation_config)

    monkeypatch.setattr(compiled.model, "_valid_auto_compile_criteria", criteria)
    batch = prepared(preprocess, count=3)
    assert list(compiled(batch)["generated_text"]) == list(plain(batch)["generated_text"])
    assert StaticCache in caches and config.compile_config in caches
