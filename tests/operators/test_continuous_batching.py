"""Continuous batching: rows decoded through fewer slots than rows, refilled as rows stop, generate what one plain
batched `model.generate` call generates, and only the tokens each row needs are decoded."""

import json

import numpy as np
import pytest
import torch

from llava_batch.operators.generation import continuous_batching, static_slots
from llava_batch.operators.generation.continuous_batching import decoding_settings
from llava_batch.operators.generation.replica import REPLICA_STATS_COLUMN, Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.tensor_codec import unpack_arrays
from llava_batch.pipeline.families import FAMILIES
from llava_batch.pipeline.families.tiny_models import varied_length_stop_token
from tests.support.images import SIZES, image_bytes

PROMPTS = ["Describe this image.", "What is in the picture? Answer in detail please.", "Name it.", "Colours?"]
ROWS = 10
MAX_NEW_TOKENS = 16


def raw_batch(count: int = ROWS) -> dict[str, np.ndarray]:
    data = np.empty(count, dtype=object)
    data[:] = [image_bytes(index, SIZES[index % len(SIZES)], "PNG") for index in range(count)]
    return {
        "id": np.array([f"row-{index}" for index in range(count)], dtype=object),
        "image_bytes": data,
        "prompt": np.array([PROMPTS[index % len(PROMPTS)] for index in range(count)], dtype=object),
    }


def operator(model: str, slots: int, continuous: bool = True, **kwargs) -> Generate:
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, **kwargs.pop("generate_kwargs", {})}
    return Generate(
        model,
        generate_kwargs=settings,
        dtype="float32",
        rows_per_call=slots,
        continuous_batching=continuous,
        **kwargs,
    )


def stop_token_ending_rows_early(model: str, prepared: dict[str, np.ndarray]) -> int:
    """A stop token that ends these rows at different lengths, from their plain greedy outputs."""
    plain = operator(model, ROWS, continuous=False)
    rows = [plain.expand_row_pixels(unpack_arrays(blob)) for blob in prepared["model_inputs"]]
    inputs = plain.collate_on_device(rows, "left")
    with torch.inference_mode():
        output = plain.model.generate(
            **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=plain.pad_token_id
        )
    return varied_length_stop_token(output[:, inputs["input_ids"].shape[1] :].tolist())


@pytest.fixture(scope="module")
def family_rows(tiny_models):
    """family -> (model path, preprocessed rows, a stop token that ends them at different lengths), built once."""
    built = {}

    def build(family: str) -> tuple[str, dict[str, np.ndarray], int]:
        if family not in built:
            model = str(tiny_models[family])
            prepared = PreprocessForModel(model, max_image_pixels=10**8)(raw_batch())
            assert all(error is None for error in prepared["error"])
            built[family] = model, prepared, stop_token_ending_rows_early(model, prepared)
        return built[family]

    return build


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_through_three_slots_generate_what_one_plain_batch_generates(family, family_rows):
    model, prepared, stop = family_rows(family)
    settings = {"generate_kwargs": {"eos_token_id": stop}}
    plain = operator(model, ROWS, continuous=False, **settings)(prepared)
    slotted_operator = operator(model, 3, **settings)
    decoded_rows = []  # rows in each decoding forward (one new token per row)
    real_forward = slotted_operator.model.forward

    def counting_forward(*args, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            decoded_rows.append(int(kwargs["input_ids"].shape[0]))
        return real_forward(*args, **kwargs)

    slotted_operator.model.forward = counting_forward
    slotted = slotted_operator(prepared)

    assert list(slotted["generated_text"]) == list(plain["generated_text"]), family
    counts = [int(count) for count in slotted["num_output_tokens"]]
    assert counts == [int(count) for count in plain["num_output_tokens"]]
    assert list(slotted["finish_reason"]) == list(plain["finish_reason"])
    assert len(set(counts)) >= 3, f"rows should stop at different lengths: {counts}"
    assert "stop" in set(slotted["finish_reason"])
    stats = json.loads(slotted[REPLICA_STATS_COLUMN][0])
    # A row's first token comes from its prefill and each later one from one decoding step of that row.
    assert stats["decode_row_steps"] == sum(counts) - ROWS
    assert stats["decode_steps"] == len(decoded_rows) and max(decoded_rows) <= 3
    # Done rows stay in the batch until the next refill (one cache copy for several of them), so the forwards
    # decode a little more than the live rows, but far less than one batch decoded to its longest row.
    assert sum(counts) - ROWS <= sum(decoded_rows) < ROWS * (max(counts) - 1)
    assert 0.5 < stats["decode_row_steps"] / stats["decode_slot_steps"] <= 1.0


def test_sampled_rows_do_not_depend_on_the_rows_beside_them(family_rows):
    model, prepared, _ = family_rows("llava")
    sampling = {"generate_kwargs": {"do_sample": True, "temperature": 1.5, "top_p": 0.95}}
    batched = operator(model, 4, **sampling)(prepared)["generated_text"].tolist()
    alone = [
        operator(model, 1, **sampling)({name: values[i : i + 1] for name, values in prepared.items()})
        for i in (0, 5)
    ]
    assert [out["generated_text"][0] for out in alone] == [batched[0], batched[5]]
    assert operator(model, 4, **sampling)(prepared)["generated_text"].tolist() == batched
    reseeded = operator(model, 4, seed=1, **sampling)(prepared)["generated_text"].tolist()
    assert reseeded != batched
    greedy = operator(model, 4)(prepared)["generated_text"].tolist()
    assert greedy != batched


def test_min_new_tokens_holds_the_stop_token_back(family_rows):
    model, prepared, stop = family_rows("llava_next")
    settings = {"generate_kwargs": {"eos_token_id": stop, "min_new_tokens": 5}}
    slotted = operator(model, 3, **settings)(prepared)
    plain = operator(model, ROWS, continuous=False, **settings)(prepared)
    assert list(slotted["generated_text"]) == list(plain["generated_text"])
    assert list(slotted["num_output_tokens"]) == list(plain["num_output_tokens"])
    assert min(slotted["num_output_tokens"]) >= 5


def test_token_budget_caps_the_rows_decoded_at_once(tiny_models):
    model = str(tiny_models["llava"])
    prepared = PreprocessForModel(model, max_image_pixels=10**8)(raw_batch(6))
    longest = max(int(count) for count in prepared["num_input_tokens"])
    budgeted = operator(model, 6, max_batch_tokens=2 * longest)  # two rows at a time, at most
    rows_per_forward = []
    real_forward = budgeted.model.forward

    def counting_forward(*args, **kwargs):
        rows_per_forward.append(int(kwargs["input_ids"].shape[0]))
        return real_forward(*args, **kwargs)

    budgeted.model.forward = counting_forward
    out = budgeted(prepared)
    assert list(out["generated_text"]) == list(
        operator(model, 6, continuous=False)(prepared)["generated_text"]
    )
    assert max(rows_per_forward) == 2


def test_a_cache_that_cannot_be_rearranged_runs_model_generate(tiny_models, monkeypatch):
    model = str(tiny_models["llava"])
    prepared = PreprocessForModel(model, max_image_pixels=10**8)(raw_batch(4))
    expected = operator(model, 4, continuous=False)(prepared)["generated_text"].tolist()
    generate = operator(model, 2)
    monkeypatch.setattr(continuous_batching, "cache_is_rearrangeable", lambda cache: False)
    calls = []
    real_generate = generate.model.generate

    def counting_generate(**kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real_generate(**kwargs)

    monkeypatch.setattr(generate.model, "generate", counting_generate)
    assert generate(prepared)["generated_text"].tolist() == expected
    assert calls == [2, 2] and generate.continuous_batching is False


def test_rows_with_one_and_two_images_share_the_slots(tiny_models):
    model = str(tiny_models["llava_interleave"])
    data = np.empty(5, dtype=object)
    data[:] = [[image_bytes(2 * i, SIZES[i]), image_bytes(2 * i + 1, SIZES[i + 1])] for i in range(3)] + [
        image_bytes(7, SIZES[0]),
        image_bytes(8, SIZES[2]),
    ]
    prompts = ["Compare <image> and <image>."] * 3 + ["Describe this image."] * 2
    batch = {
        "id": np.array(list("abcde"), dtype=object),
        "image_bytes": data,
        "prompt": np.array(prompts, dtype=object),
    }
    prepared = PreprocessForModel(model, max_image_pixels=10**8)(batch)
    assert all(error is None for error in prepared["error"])
    slotted = operator(model, 2)(prepared)["generated_text"].tolist()
    assert slotted == operator(model, 5, continuous=False)(prepared)["generated_text"].tolist()
    assert len(set(slotted)) == 5


@pytest.mark.parametrize(
    ("extra", "reproduced"),
    [
        ({}, True),
        ({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20}, True),
        ({"repetition_penalty": 1.3}, False),
        ({"num_beams": 2}, False),
        ({"no_repeat_ngram_size": 3}, False),
        ({"repetition_penalty": 1.0}, True),  # the neutral value changes nothing
    ],
)
def test_settings_the_slots_do_not_reproduce_go_to_model_generate(tiny_models, extra, reproduced):
    generate = operator(str(tiny_models["llava"]), 2)
    kwargs = {"max_new_tokens": 7, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    settings = decoding_settings(generate.model, {**kwargs, **extra}, {2})
    assert (settings is not None) == reproduced
    if settings is not None:
        assert settings.max_new_tokens == 7 and settings.eos_token_ids == frozenset(generate.eos_token_ids)
        assert (settings.do_sample, settings.temperature, settings.top_p, settings.top_k) == (
            (True, 0.7, 0.9, 20) if extra.get("do_sample") else (False, 1.0, 1.0, 0)
        )


def test_stop_token_from_the_settings_wins(tiny_models):
    generate = operator(str(tiny_models["llava"]), 2)
    settings = decoding_settings(generate.model, {"max_new_tokens": 3, "eos_token_id": [5, 6]}, {2})
    assert settings.eos_token_ids == frozenset({5, 6})
    assert torch.equal(
        continuous_batching.ContinuousBatcher(generate.model, settings, collate=dict, slots=2).eos,
        torch.tensor([5, 6]),
    )


def test_growing_layer_appends_in_place_until_its_spare_room_is_used():
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = continuous_batching.GrowingLayer(keys, values, spare=2)
    storage = layer.key_buffer.data_ptr()
    steps = [(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)) for _ in range(3)]
    for step, (new_keys, new_values) in enumerate(steps):
        returned_keys, returned_values = layer.update(new_keys, new_values)
        keys, values = torch.cat([keys, new_keys], dim=2), torch.cat([values, new_values], dim=2)
        assert torch.equal(returned_keys, keys) and torch.equal(returned_values, values)
        assert layer.get_seq_length() == 6 + step
        # Two steps fit the spare room: written in place; the third reallocates (with new spare room).
        assert (layer.key_buffer.data_ptr() == storage) == (step < 2)
    assert layer.key_buffer.shape[2] == 7 + 2  # reallocated holding 7 positions, plus the spare room


@pytest.fixture
def compile_requests(monkeypatch):
    """torch.compile recorded, not run: compiling takes a minute on this CPU (the slow tier compiles for real,
    tests/operators/test_static_slots_compiled.py). Each request is (mode, dynamic)."""
    requests = []

    def record(function, *, mode=None, dynamic=None, **_):
        requests.append((mode, dynamic))
        return function

    monkeypatch.setattr(torch, "compile", record)
    return requests


@pytest.mark.parametrize("family", FAMILIES)
def test_compile_decodes_in_static_slots_whose_step_never_changes_shape(
    family, family_rows, compile_requests
):
    """--compile with continuous batching: rows refill slots of a static cache, so every decoding step has the
    same shapes (what a compiled step and a CUDA graph need), and the texts are the plain batched call's."""
    model, prepared, stop = family_rows(family)
    settings = {"generate_kwargs": {"eos_token_id": stop}}
    plain = operator(model, ROWS, continuous=False, **settings)(prepared)
    static = operator(model, 3, compile=True, **settings)
    step_shapes = []
    real_forward = static.model.forward

    def recording_forward(*args, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            step_shapes.append((tuple(kwargs["input_ids"].shape), tuple(kwargs["attention_mask"].shape)))
        return real_forward(*args, **kwargs)

    static.model.forward = recording_forward
    first = static(prepared)
    assert list(first["generated_text"]) == list(plain["generated_text"]), family
    assert list(first["num_output_tokens"]) == list(plain["num_output_tokens"])
    counts = [int(count) for count in first["num_output_tokens"]]
    assert len(set(counts)) >= 3, f"rows should stop at different lengths: {counts}"
    capacity = static_slots.slot_capacity(max(int(n) for n in prepared["num_input_tokens"]), MAX_NEW_TOKENS)
    assert set(step_shapes) == {((3, 1), (3, 1, 1, capacity))}
    stats = json.loads(first[REPLICA_STATS_COLUMN][0])
    assert stats["decode_row_steps"] == sum(counts) - ROWS
    # A finished row frees its slot at once: the steps hold only live rows and a few empty slots.
    assert stats["decode_steps"] == len(step_shapes) < (sum(counts) - ROWS) / 2
    # A second call of the same shape reuses the buffers and the compiled step: one compile request in all.
    second = static(prepared)
    assert list(second["generated_text"]) == list(plain["generated_text"])
    assert compile_requests == [("default", False)]  # on CPU; "reduce-overhead" (CUDA graphs) on a GPU


def test_sampled_rows_in_static_slots_do_not_depend_on_the_rows_beside_them(family_rows, compile_requests):
    model, prepared, _ = family_rows("llava")
    sampling = {"generate_kwargs": {"do_sample": True, "temperature": 1.5, "top_p": 0.95}, "compile": True}
    batched = operator(model, 4, **sampling)(prepared)["generated_text"].tolist()
    alone = [
        operator(model, 1, **sampling)({name: values[i : i + 1] for name, values in prepared.items()})
        for i in (0, 5)
    ]
    assert [out["generated_text"][0] for out in alone] == [batched[0], batched[5]]
    # The same rows sample the same texts in growing slots as in static ones (one generator per row).
    assert (
        operator(model, 4, generate_kwargs=sampling["generate_kwargs"])(prepared)["generated_text"].tolist()
        == batched
    )


def test_token_budget_caps_the_static_slots(tiny_models, compile_requests):
    model = str(tiny_models["llava"])
    prepared = PreprocessForModel(model, max_image_pixels=10**8)(raw_batch(6))
    capacity = static_slots.slot_capacity(max(int(n) for n in prepared["num_input_tokens"]), MAX_NEW_TOKENS)
    budgeted = operator(model, 6, compile=True, max_batch_tokens=2 * capacity + 1)
    rows_per_step = []
    real_forward = budgeted.model.forward

    def counting_forward(*args, **kwargs):
        rows_per_step.append(int(kwargs["input_ids"].shape[0]))
        return real_forward(*args, **kwargs)

    budgeted.model.forward = counting_forward
    out = budgeted(prepared)
    expected = operator(model, 6, continuous=False)(prepared)["generated_text"]
    assert list(out["generated_text"]) == list(expected)
    assert max(rows_per_step) == 2


@pytest.mark.parametrize(
    ("prompt", "new_tokens", "capacity"), [(10, 16, 64), (48, 16, 64), (49, 16, 128), (600, 64, 1024)]
)
def test_slot_capacity_is_a_power_of_two_that_holds_prompt_and_new_tokens(prompt, new_tokens, capacity):
    assert static_slots.slot_capacity(prompt, new_tokens) == capacity


def test_slot_layer_writes_each_rows_entry_at_its_own_position():
    keys, values = torch.zeros(3, 2, 8, 4), torch.zeros(3, 2, 8, 4)
    write_at = torch.tensor([0, 5, 7])
    layer = static_slots.SlotLayer(keys, values, write_at)
    new_keys, new_values = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    returned_keys, returned_values = layer.update(new_keys, new_values)
    assert returned_keys.data_ptr() == keys.data_ptr()  # in place: the buffers a compiled step was built on
    for row, position in enumerate(write_at.tolist()):
        assert torch.equal(keys[row, :, position], new_keys[row, :, 0])
        assert torch.equal(values[row, :, position], new_values[row, :, 0])
        others = [column for column in range(8) if column != position]
        assert not keys[row, :, others].any()
    assert layer.get_mask_sizes(1) == (8, 0)
