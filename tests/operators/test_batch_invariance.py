"""In float32, a row's greedy output must not depend on the rows batched with it (left padding)."""

import numpy as np
import pytest

from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.tensor_codec import unpack_arrays
from llava_batch.pipeline.families import FAMILIES
from tests.support.images import SIZES, image_bytes

MAX_NEW_TOKENS = 10


def raw_batch(count: int) -> dict[str, np.ndarray]:
    prompts = [
        "Describe this image.",
        "What is in the picture? Answer in detail please.",
        "Name it.",
        "Colours?",
    ]
    data = np.empty(count, dtype=object)
    data[:] = [image_bytes(index, SIZES[index], "PNG") for index in range(count)]
    return {
        "id": np.array([f"row-{index}" for index in range(count)], dtype=object),
        "image_bytes": data,
        "prompt": np.array([prompts[index % len(prompts)] for index in range(count)], dtype=object),
    }


@pytest.fixture(scope="module")
def operators_by_family(tiny_models):
    def build(family, padding_side="left"):
        model = str(tiny_models[family])
        preprocess = PreprocessForModel(model, max_image_pixels=10**8)
        generate = Generate(
            model,
            generate_kwargs={"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False},
            dtype="float32",
            padding_side=padding_side,
        )
        return preprocess, generate

    return build


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rows_equal_rows_generated_alone(family, operators_by_family):
    preprocess, generate = operators_by_family(family)
    prepared = preprocess(raw_batch(4))
    assert all(error is None for error in prepared["error"])
    token_counts = [int(unpack_arrays(blob)["input_ids"].shape[0]) for blob in prepared["model_inputs"]]
    assert len(set(token_counts)) > 1, "rows must differ in length for padding to matter"
    if family == "llava_next":
        assert len(set(prepared["num_image_tokens"])) > 1, (
            "anyres rows should carry different image-token counts"
        )

    batched = generate(prepared)
    alone = [generate({name: values[i : i + 1] for name, values in prepared.items()}) for i in range(4)]
    assert list(batched["generated_text"]) == [row["generated_text"][0] for row in alone]
    assert list(batched["num_output_tokens"]) == [row["num_output_tokens"][0] for row in alone]
    assert all(reason in ("stop", "length") for reason in batched["finish_reason"])
    assert len(set(batched["generated_text"])) > 1, "outputs should depend on the image"


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_right_padding_breaks_batch_invariance(family, operators_by_family):
    preprocess, _ = operators_by_family(family)
    _, right = operators_by_family(family, padding_side="right")
    prepared = preprocess(raw_batch(4))
    batched = right(prepared)
    alone = [
        right({name: values[i : i + 1] for name, values in prepared.items()})["generated_text"][0]
        for i in range(4)
    ]
    mismatches = sum(b != a for b, a in zip(batched["generated_text"], alone))
    assert mismatches >= 1
