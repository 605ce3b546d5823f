"""uint8 pixel transport: the model side's float32 pixels equal the processor's own output, at 1/4 of the bytes."""

import numpy as np
import pytest

from llava_batch.operators.chat_template import render_prompt, user_turn
from llava_batch.operators.decode import decode_image
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.pixel_transport import pixel_table
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.tensor_codec import unpack_arrays
from tests.support.images import SIZES, image_bytes

FAMILIES = ["llava", "llava_next", "vipllava", "llava_interleave"]


def batch_of(payloads: list, prompts: list[str]) -> dict[str, np.ndarray]:
    images = np.empty(len(payloads), dtype=object)
    images[:] = payloads
    return {
        "id": np.array([f"row-{index}" for index in range(len(payloads))], dtype=object),
        "image_bytes": images,
        "prompt": np.array(prompts, dtype=object),
    }


def processor_pixels(preprocess: PreprocessForModel, payloads: list[bytes], prompt: str) -> np.ndarray:
    """The processor's own float32 pixel values for one row, called the ordinary way."""
    images = [decode_image(payload, max_image_pixels=10**8) for payload in payloads]
    text = render_prompt(preprocess.processor, user_turn(prompt, len(images)))
    return preprocess.processor(text=[text], images=images, return_tensors="np")["pixel_values"]


@pytest.fixture(scope="module")
def replicas(tiny_models):
    cache = {}

    def build(family):
        if family not in cache:
            model = str(tiny_models[family])
            cache[family] = Generate(
                model, generate_kwargs={"max_new_tokens": 6, "do_sample": False}, dtype="float32"
            )
        return cache[family]

    return build


@pytest.mark.parametrize("family", FAMILIES)
def test_uint8_pixels_expand_to_the_processors_float32_values(family, tiny_models, replicas):
    preprocess = PreprocessForModel(str(tiny_models[family]), max_image_pixels=10**8)
    float32_preprocess = PreprocessForModel(
        str(tiny_models[family]), max_image_pixels=10**8, compact_pixels=False
    )
    generate = replicas(family)
    # All test sizes: LLaVA-NeXT pads 150x50 and 33x77 to their best anyres resolution (with 0 before normalising).
    payloads = [image_bytes(index, size) for index, size in enumerate(SIZES)]
    prompts = ["Describe this image."] * len(payloads)
    compact = preprocess(batch_of(payloads, prompts))
    wide = float32_preprocess(batch_of(payloads, prompts))
    assert all(error is None for error in compact["error"])
    for index, payload in enumerate(payloads):
        arrays = unpack_arrays(compact["model_inputs"][index])
        float32_arrays = unpack_arrays(wide["model_inputs"][index])
        assert arrays["pixel_values"].dtype == np.uint8
        assert float32_arrays["pixel_values"].dtype == np.float32
        # Bytes per image: a quarter of the float32 pixels; ids and image sizes unchanged.
        assert arrays["pixel_values"].nbytes * 4 == float32_arrays["pixel_values"].nbytes
        # ... and the packed row shrinks by exactly the 3/4 saved (the npz container adds the same bytes to both).
        saved = len(wide["model_inputs"][index]) - len(compact["model_inputs"][index])
        assert saved == 3 * arrays["pixel_values"].nbytes
        np.testing.assert_array_equal(arrays["input_ids"], float32_arrays["input_ids"])
        expected = processor_pixels(preprocess, [payload], prompts[index])
        decoded = generate.expand_row_pixels(arrays)["pixel_values"].cpu().numpy()
        assert decoded.dtype == np.float32
        assert decoded.shape == expected.shape
        assert np.abs(decoded - expected).max() == 0.0
    # Generation from uint8 transport equals generation from float32 transport, row for row.
    assert list(generate(compact)["generated_text"]) == list(generate(wide)["generated_text"])


def test_llava_next_rows_with_several_images_keep_float32(tiny_models, replicas):
    """LLaVA-NeXT zero-pads a row's images to one patch count after normalising: such rows stay float32."""
    preprocess = PreprocessForModel(str(tiny_models["llava_next"]), max_image_pixels=10**8)
    pair = [image_bytes(0, (40, 30)), image_bytes(3, (150, 50))]
    prepared = preprocess(batch_of([pair, pair[0]], ["Compare these.", "One image."]))
    two, one = (unpack_arrays(blob) for blob in prepared["model_inputs"])
    assert two["pixel_values"].dtype == np.float32
    assert one["pixel_values"].dtype == np.uint8
    expected = processor_pixels(preprocess, pair, "Compare these.")
    passed = replicas("llava_next").expand_row_pixels(two)["pixel_values"]
    assert passed is two["pixel_values"]  # float32 rows go to the model as they came
    assert np.abs(passed - expected).max() == 0.0
    decoded = replicas("llava_next").expand_row_pixels(one)["pixel_values"].cpu().numpy()
    expected = processor_pixels(preprocess, pair[:1], "One image.")
    assert np.abs(decoded - expected).max() == 0.0


def test_a_table_that_does_not_reproduce_the_processor_falls_back_to_float32(tiny_models):
    preprocess = PreprocessForModel(str(tiny_models["llava"]), max_image_pixels=10**8)
    preprocess.pixel_table = preprocess.pixel_table.copy()
    preprocess.pixel_table[0] += 1e-3  # a model side normalising differently from the processor
    prepared = preprocess(batch_of([image_bytes(0, (40, 30)), image_bytes(1, (64, 64))], ["a", "b"]))
    assert preprocess.pixel_table is None
    assert [unpack_arrays(blob)["pixel_values"].dtype for blob in prepared["model_inputs"]] == [
        np.float32,
        np.float32,
    ]


def test_pixel_table_follows_the_processor_settings(tiny_models):
    processor = PreprocessForModel(str(tiny_models["llava_interleave"]), max_image_pixels=10**8).processor
    image_processor = processor.image_processor
    table = pixel_table(image_processor)
    assert table.shape == (3, 256) and table.dtype == np.float32
    # SigLIP: mean = std = 0.5, so 0 -> -1 and 255 -> 1.
    assert table[:, 0].tolist() == [-1.0, -1.0, -1.0]
    assert table[:, 255].tolist() == [1.0, 1.0, 1.0]
    image_processor.do_normalize = False
    assert table_levels(pixel_table(image_processor)) == pytest.approx([0.0, 1.0])
    image_processor.image_mean = [0.5, 0.5]  # not one value per channel: no exact table
    image_processor.do_normalize = True
    assert pixel_table(image_processor) is None


def table_levels(table: np.ndarray) -> list[float]:
    return [float(table[0, 0]), float(table[0, 255])]
