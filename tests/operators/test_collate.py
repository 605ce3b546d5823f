import numpy as np

from llava_batch.operators.generation.collate import left_pad_collate
from llava_batch.operators.tensor_codec import pack_arrays, unpack_arrays


def rows():
    return [
        {
            "input_ids": np.array([5, 6, 7]),
            "pixel_values": np.ones((1, 2, 3, 4, 4), np.float32),
            "image_sizes": np.array([[8, 8]]),
        },
        {
            "input_ids": np.array([9]),
            "pixel_values": np.full((1, 4, 3, 4, 4), 2, np.float32),
            "image_sizes": np.array([[8, 16]]),
        },
    ]


def test_left_padding_aligns_the_last_prompt_token():
    batch = left_pad_collate(rows(), pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_right_padding_is_available_for_the_counter_test():
    batch = left_pad_collate(rows(), pad_token_id=0, padding_side="right")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_anyres_patches_are_zero_padded_to_the_longest_row():
    batch = left_pad_collate(rows(), pad_token_id=0)
    pixels = batch["pixel_values"]
    assert tuple(pixels.shape) == (2, 4, 3, 4, 4)
    assert pixels[0, :2].eq(1).all() and pixels[0, 2:].eq(0).all()
    assert pixels[1].eq(2).all()
    assert batch["image_sizes"].tolist() == [[8, 8], [8, 16]]


def test_multi_image_rows_concatenate_images_in_order():
    first = {
        "input_ids": np.array([1]),
        "pixel_values": np.stack([np.full((3, 2, 2), v, np.float32) for v in (1, 2)]),
    }
    second = {"input_ids": np.array([1]), "pixel_values": np.full((1, 3, 2, 2), 3, np.float32)}
    pixels = left_pad_collate([first, second], pad_token_id=0)["pixel_values"]
    assert [float(pixels[i, 0, 0, 0]) for i in range(3)] == [1.0, 2.0, 3.0]


def test_packed_arrays_keep_dtype_and_shape():
    original = rows()[1]
    restored = unpack_arrays(pack_arrays(original))
    assert set(restored) == set(original)
    for name, array in original.items():
        assert restored[name].dtype == array.dtype and np.array_equal(restored[name], array)
