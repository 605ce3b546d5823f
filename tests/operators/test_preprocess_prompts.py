"""Preprocessing each kind of prompt: string-content conversations get the row's images by the README's rule, and a
raw prompt (--raw-prompt-column) is tokenized verbatim, exactly as a rendered conversation is."""

import json

import numpy as np
import pytest

from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.operators.tensor_codec import unpack_arrays
from tests.support.images import image_bytes, make_image

# Tiny llava: 32x32 CLIP crops in 8x8 patches, plus CLS dropped by the default strategy -> 16 image tokens.
LLAVA_IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def llava(tiny_models):
    return PreprocessForModel(str(tiny_models["llava"]), max_image_pixels=10**8)


@pytest.fixture(scope="module")
def interleave(tiny_models):
    return PreprocessForModel(str(tiny_models["llava_interleave"]), max_image_pixels=10**8)


def rows(images_per_row, conversations):
    data = np.empty(len(images_per_row), dtype=object)
    data[:] = [
        [image_bytes(10 * row + index, (40, 30)) for index in range(count)]
        for row, count in enumerate(images_per_row)
    ]
    return {
        "id": np.array([f"r{i}" for i in range(len(data))], dtype=object),
        "image_bytes": data,
        "prompt": np.array(["unused"] * len(data), dtype=object),
        "conversation": np.array([json.dumps(value) for value in conversations], dtype=object),
    }


def decoded(preprocess, out, index):
    """The prompt a row's model inputs hold, as text (image tokens included)."""
    return preprocess.processor.tokenizer.decode(
        unpack_arrays(out["model_inputs"][index])["input_ids"].tolist()
    )


STRING_TURN = [{"role": "user", "content": "What is in the image?"}]
MULTI_TURN = [
    {"role": "user", "content": "What is in the image?"},
    {"role": "assistant", "content": "a red circle"},
    {"role": "user", "content": "Where is it?"},
]


def test_string_content_conversations_get_the_rows_image_first(llava):
    out = llava(rows([1, 1], [STRING_TURN, MULTI_TURN]))
    assert out["error"].tolist() == [None, None]
    assert out["num_image_tokens"].tolist() == [LLAVA_IMAGE_TOKENS] * 2
    # One image block, before the first user text; the later turn has none.
    first = decoded(llava, out, 0).replace("<image>" * LLAVA_IMAGE_TOKENS, "<image>")
    assert first.endswith("USER: <image>\nWhat is in the image? ASSISTANT:")
    second = decoded(llava, out, 1).replace("<image>" * LLAVA_IMAGE_TOKENS, "<image>")
    assert second.endswith(
        "USER: <image>\nWhat is in the image? ASSISTANT: a red circle</s>USER: Where is it? ASSISTANT:"
    )


def test_several_images_per_row_go_first_in_the_first_user_turn(interleave):
    two_images = [
        {"role": "user", "content": "Name the shape in each image."},
        {"role": "assistant", "content": "circle, star"},
        {"role": "user", "content": "Which image has more shapes?"},
    ]
    placed = [{"role": "user", "content": "Compare <image> with <image>."}]
    out = interleave(rows([2, 2, 3], [two_images, placed, placed]))
    assert out["error"][:2].tolist() == [None, None]
    tokens = out["num_image_tokens"].tolist()
    assert tokens[0] == tokens[1] > 0 and tokens[0] % 2 == 0
    text = decoded(interleave, out, 0)
    assert text.index("<image>") < text.index("Name the shape") < text.index("Which image")
    assert text.count("<image>") == tokens[0] and text.rindex("<image>") < text.index("Name the shape")
    assert out["error"][2] == "preprocess: the prompt has 2 image placeholder(s) but the row has 3 image(s)"


RAW = "USER: <image>\nWhat is in the image? ASSISTANT:"
LIST_TURN = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}
]


def test_a_raw_prompt_is_tokenized_as_the_rendered_conversation_and_as_the_model_docs_do(llava):
    image = make_image(3, (40, 30))
    raw = llava.preprocess_row(image_bytes(3, (40, 30)), "", raw_prompt=RAW)
    rendered = llava.preprocess_row(image_bytes(3, (40, 30)), "", conversation=LIST_TURN)
    # The model docs: processor(images=image, text=prompt) on the prompt string.
    docs = llava.processor(images=image, text=RAW, return_tensors="np")["input_ids"][0]
    assert raw["input_ids"].tolist() == rendered["input_ids"].tolist() == docs.tolist()
    bos = llava.processor.tokenizer.bos_token_id
    assert raw["input_ids"][0] == bos and raw["input_ids"].tolist().count(bos) == 1


def test_a_raw_prompt_is_used_verbatim_and_its_placeholders_counted(llava):
    multi_turn = "USER: <image>\nWhat is in the image? ASSISTANT: a red circle</s>USER: Where? ASSISTANT:"
    batch = rows([1, 2, 1], [multi_turn, RAW, "USER: What? ASSISTANT:"])
    out = llava(batch)
    assert out["error"].tolist() == [
        None,
        "preprocess: the raw prompt has 1 <image> placeholder(s) but the row has 2 image(s)",
        "preprocess: the raw prompt has 0 <image> placeholder(s) but the row has 1 image(s)",
    ]
    text = decoded(llava, out, 0).replace("<image>" * LLAVA_IMAGE_TOKENS, "<image>")
    assert text == "<s>" + multi_turn  # no chat template around it, no second wrapping
