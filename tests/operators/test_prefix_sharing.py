"""Rows that show the same image under several prompts prefill the image once, and generate what the plain
batched call generates."""

import numpy as np
import pytest

from llava_batch.operators.generation.length_grouping import plan_generate_calls
from llava_batch.operators.generation.prefix_sharing import (
    plan_shared_prefixes,
    prefix_key,
    prefix_keys,
    prefix_length,
)
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.model_source import builtin_model_path
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.tensor_codec import unpack_arrays
from llava_batch.training.oracle import exact_match, oracle_operators, pipeline_rows, predict
from llava_batch.training.shapes import PROMPTS as TRAINED_PROMPTS
from llava_batch.training.shapes import samples
from tests.support.images import SIZES, image_bytes

FAMILIES = ["llava", "llava_next", "vipllava", "llava_interleave"]
PROMPTS = ["Describe this image.", "What is in the picture? Answer in detail please.", "Name it."]
IMAGE = 4  # an image token id for the unit tests on hand-made rows


def prompt_set_batch() -> dict[str, np.ndarray]:
    """Two images x three prompts (image-major, as a prompt set expands them), then a third image alone."""
    images = [(index, SIZES[index + 1]) for index in range(3)]
    rows = [(image, prompt) for image in images[:2] for prompt in PROMPTS] + [(images[2], PROMPTS[0])]
    data = np.empty(len(rows), dtype=object)
    data[:] = [image_bytes(index, size, "PNG") for (index, size), _ in rows]
    return {
        "id": np.array([f"row-{index}" for index in range(len(rows))], dtype=object),
        "image_bytes": data,
        "prompt": np.array([prompt for _, prompt in rows], dtype=object),
    }


def test_prefix_ends_after_the_last_image_token_and_leaves_one_token():
    assert prefix_length(np.array([1, 9, IMAGE, IMAGE, 7, 8]), IMAGE) == 4
    assert prefix_length(np.array([1, IMAGE, 5, IMAGE, 7]), IMAGE) == 4
    assert prefix_length(np.array([1, IMAGE, IMAGE]), IMAGE) == 2  # one token left to feed after the cache
    assert prefix_length(np.array([1, 2, 3]), IMAGE) == 0


def test_prefix_key_is_equal_only_for_equal_prefix_tokens_and_pixels():
    pixels = np.arange(12, dtype=np.uint8).reshape(1, 3, 2, 2)
    row = {"input_ids": np.array([1, IMAGE, IMAGE, 7, 8]), "pixel_values": pixels}
    other_prompt = {"input_ids": np.array([1, IMAGE, IMAGE, 9, 9, 9]), "pixel_values": pixels.copy()}
    other_image = {"input_ids": row["input_ids"], "pixel_values": pixels[..., ::-1].copy()}
    other_prefix = {"input_ids": np.array([2, IMAGE, IMAGE, 7, 8]), "pixel_values": pixels}
    assert prefix_key(row, IMAGE) == prefix_key(other_prompt, IMAGE)
    assert prefix_key(row, IMAGE) != prefix_key(other_image, IMAGE)
    assert prefix_key(row, IMAGE) != prefix_key(other_prefix, IMAGE)
    assert prefix_key({"input_ids": np.array([1, 2, 3])}, IMAGE) is None


def test_batch_keys_hash_whole_rows_only_where_fingerprints_repeat():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    # Differs from `pixels` in one value that the fingerprint's evenly spaced samples skip.
    almost = pixels.copy()
    almost.reshape(-1)[1] ^= 1
    ids = np.array([1, IMAGE, IMAGE, 7])
    rows = [
        {"input_ids": ids, "pixel_values": pixels},
        {"input_ids": np.array([1, IMAGE, IMAGE, 9, 9]), "pixel_values": pixels.copy()},
        {"input_ids": ids, "pixel_values": almost},
        {"input_ids": ids, "pixel_values": rng.integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)},
        {"input_ids": np.array([1, 2, 3])},
    ]
    keys = prefix_keys(rows, IMAGE)
    assert prefix_key(rows[0], IMAGE, sample=True) == prefix_key(rows[2], IMAGE, sample=True)
    assert keys[0] == keys[1] == b"whole:" + prefix_key(rows[0], IMAGE)
    assert keys[2] == b"whole:" + prefix_key(rows[2], IMAGE) != keys[0]  # a fingerprint collision, told apart
    assert keys[3] == b"alone:" + prefix_key(rows[3], IMAGE, sample=True)  # its own image: never hashed whole
    assert keys[4] is None


def test_plan_groups_rows_and_declines_when_nothing_is_shared():
    rows = [{"input_ids": np.array([1, IMAGE, 5 + index])} for index in range(3)]
    plan = plan_shared_prefixes(rows, [b"a", b"b", b"a"], IMAGE)
    assert (plan.group, plan.representatives, plan.prefix_lengths) == ([0, 1, 0], [0, 1], [2, 2, 2])
    assert plan_shared_prefixes(rows, [b"a", b"b", b"c"], IMAGE) is None
    assert plan_shared_prefixes(rows, [b"a", None, b"a"], IMAGE) is None


def test_call_planner_keeps_rows_of_one_image_in_one_call():
    # Three images x two prompts of lengths 10 and 20: sorting by length alone would put every short prompt in
    # the first call and no image would be shared.
    lengths = [10, 20, 10, 20, 10, 20]
    keys = ["a", "a", "b", "b", "c", "c"]
    assert plan_generate_calls(lengths, max_rows=2) == [[0, 2], [4, 1], [3, 5]]
    assert plan_generate_calls(lengths, max_rows=2, keep_together=keys) == [[0, 1], [2, 3], [4, 5]]
    # Groups still sort by (their longest) length, and rows without a key by their own.
    mixed = plan_generate_calls([50, 5, 30, 30], max_rows=2, keep_together=[None, None, "x", "x"])
    assert mixed == [[1, 2], [3, 0]]
    assert plan_generate_calls(lengths, max_rows=6, group_by_length=False, keep_together=keys) == [
        [0, 1, 2, 3, 4, 5]
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_generates_what_the_plain_call_generates(family, tiny_models):
    model = str(tiny_models[family])
    preprocess = PreprocessForModel(model, max_image_pixels=10**8)
    settings = {"generate_kwargs": {"max_new_tokens": 8, "do_sample": False}, "dtype": "float32"}
    shared = Generate(model, **settings)
    plain = Generate(model, **settings, share_image_prefix=False)
    prepared = preprocess(prompt_set_batch())
    assert all(error is None for error in prepared["error"])
    lengths = [len(unpack_arrays(blob)["input_ids"]) for blob in prepared["model_inputs"]]
    assert len(set(lengths[:3])) == 3, "the prompts of one image must differ in length"

    images_seen = {"shared": 0, "plain": 0}

    def counter(name):
        def hook(module, args, kwargs):
            pixels = kwargs.get("pixel_values", args[0] if args else None)
            images_seen[name] += int(pixels.shape[0])

        return hook

    for name, operator in (("shared", shared), ("plain", plain)):
        operator.model.model.vision_tower.register_forward_pre_hook(counter(name), with_kwargs=True)
    with_sharing = shared(prepared)
    without = plain(prepared)

    assert list(with_sharing["generated_text"]) == list(without["generated_text"])
    assert list(with_sharing["num_output_tokens"]) == list(without["num_output_tokens"])
    assert all(error is None for error in with_sharing["error"])
    assert len(set(with_sharing["generated_text"])) > 1, "outputs should depend on the image and prompt"
    # The vision tower saw each of the 3 distinct images once instead of once per row (7 rows).
    assert images_seen["shared"] < images_seen["plain"]
    if family != "llava_next":  # LLaVA-NeXT feeds anyres crops, several per image
        per_image = images_seen["plain"] // 7
        assert (images_seen["shared"], images_seen["plain"]) == (3 * per_image, 7 * per_image)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_trained_checkpoint_answers_every_prompt_of_a_prompt_set(family):
    """The shipped oracle answers each of its prompts with the image's true caption: rows continued from a
    shared image prefill must still see their own image and their own question."""
    held_out = samples(family, "heldout", 16, seed=0)
    prompts = TRAINED_PROMPTS[family]
    rows = pipeline_rows(held_out)
    prompt_set = {
        "id": np.array([f"{row}#{k}" for row in rows["id"] for k in range(len(prompts))], dtype=object),
        "image_bytes": np.repeat(rows["image_bytes"], len(prompts)),
        "prompt": np.array(list(prompts) * len(held_out), dtype=object),
    }
    preprocess, generate = oracle_operators(str(builtin_model_path(family)))
    calls = []
    original = generate.prefill_shared_prefixes
    generate.prefill_shared_prefixes = lambda rows, plan: calls.append(plan) or original(rows, plan)
    texts = predict(preprocess, generate, prompt_set, batch_size=12)
    generate.share_image_prefix = False
    plain = predict(preprocess, generate, prompt_set, batch_size=12)
    answers = [sample.answer for sample in held_out for _ in prompts]
    assert texts == plain
    # Measured on these 16 images: llava 0.9375, llava_next 0.875; the misses are whole images (llava's 13th,
    # llava_next's 1st and 3rd) misread under every prompt, with or without sharing.
    assert exact_match(texts, answers) >= 0.85, list(zip(texts, answers))[:6]
    # Every call shared: batches of 12 rows = 3 or 4 images x all their prompts, prefilled once per image.
    assert len(calls) == -(-len(answers) // 12)
    assert [len(plan.representatives) for plan in calls] == [
        len(plan.group) // len(prompts) for plan in calls
    ]
    assert sum(len(plan.representatives) for plan in calls) == len(held_out)
