import json

import numpy as np
import pytest

from llava_batch.operators.prompts import expand_prompts, fill_template


def batch(fields_per_row, errors=None):
    count = len(fields_per_row)
    return {
        "id": np.array([f"img{i}.png" for i in range(count)], dtype=object),
        "shard_rows": np.array([count] * count),
        "fields": np.array([json.dumps(fields) for fields in fields_per_row], dtype=object),
        "error": np.array(errors or [None] * count, dtype=object),
    }


ONE = [{"prompt_id": "p0", "text": "Describe this image.", "generation": {}}]
TWO = [
    {"prompt_id": "short", "text": "In three words?", "generation": {"max_new_tokens": 4}},
    {"prompt_id": "long", "text": "In detail?", "generation": {}},
]


def test_one_prompt_keeps_ids_and_counts():
    out = expand_prompts(batch([{}, {}]), prompts=ONE)
    assert out["id"].tolist() == ["img0.png", "img1.png"]
    assert out["prompt"].tolist() == ["Describe this image."] * 2
    assert out["prompt_id"].tolist() == [None, None] and out["shard_rows"].tolist() == [2, 2]


def test_a_prompt_set_gives_one_row_per_prompt_with_stable_ids():
    out = expand_prompts(batch([{}, {}]), prompts=TWO)
    assert out["id"].tolist() == ["img0.png#short", "img0.png#long", "img1.png#short", "img1.png#long"]
    assert out["prompt_id"].tolist() == ["short", "long", "short", "long"]
    assert out["shard_rows"].tolist() == [4, 4, 4, 4]
    assert [json.loads(g) if g else None for g in out["generation"]] == [{"max_new_tokens": 4}, None] * 2


def test_template_filled_from_row_fields_and_a_missing_field_is_an_error_row():
    prompts = [{"prompt_id": "p0", "text": "Describe this {category} photo.", "generation": {}}]
    out = expand_prompts(batch([{"category": "cat"}, {"other": 1}]), prompts=prompts)
    assert out["prompt"][0] == "Describe this cat photo." and out["error"][0] is None
    assert out["prompt"][1] is None
    assert out["error"][1].startswith("prompt: \"template field(s) ['category'] missing from this row")


def test_literal_braces_are_escaped_by_doubling():
    assert (
        fill_template('Answer as JSON like {{"colour": "red"}}.', {})
        == 'Answer as JSON like {"colour": "red"}.'
    )


def test_prompt_column_per_row():
    out = expand_prompts(
        batch([{"question": "Is it red?"}, {"question": ""}]), prompts=ONE, prompt_column="question"
    )
    assert out["prompt"][0] == "Is it red?"
    assert out["error"][1] == "prompt: prompt column 'question' is empty or missing in this row"


def test_conversation_column_is_validated_and_carried():
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "What colour?"}]},
    ]
    bad = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    out = expand_prompts(
        batch([{"conv": conversation}, {"conv": json.dumps(bad)}]), prompts=ONE, conversation_column="conv"
    )
    assert json.loads(out["conversation"][0]) == conversation and out["prompt"][0] == "What colour?"
    assert out["error"][1] == "prompt: the conversation must end with a user turn for the model to answer"


def test_rows_that_already_failed_pass_through_untouched():
    out = expand_prompts(batch([{}], errors=["read: gone"]), prompts=TWO)
    assert out["error"].tolist() == ["read: gone", "read: gone"] and out["prompt"].tolist() == [None, None]


@pytest.mark.parametrize("missing", ["fields", "error"])
def test_optional_columns_may_be_absent(missing):
    data = batch([{}])
    del data[missing]
    assert expand_prompts(data, prompts=ONE)["prompt"].tolist() == ["Describe this image."]


LLAVA_DOCS_PROMPT = "USER: <image>\nWhat is shown? ASSISTANT: a cat</s>USER: Which colour? ASSISTANT:"


def test_raw_prompt_column_is_carried_verbatim_as_a_rendered_prompt():
    out = expand_prompts(
        batch([{"raw": LLAVA_DOCS_PROMPT}, {"raw": "  "}]), prompts=ONE, raw_prompt_column="raw"
    )
    assert out["prompt"][0] == LLAVA_DOCS_PROMPT and out["error"][0] is None
    # A JSON string, not messages: preprocess sends it to the model without a chat template.
    assert json.loads(out["conversation"][0]) == LLAVA_DOCS_PROMPT
    assert out["error"][1] == "prompt: raw prompt column 'raw' is empty or missing in this row"
    assert out["id"].tolist() == ["img0.png", "img1.png"]


def test_a_rendered_prompt_in_the_conversation_column_names_the_raw_prompt_flag():
    out = expand_prompts(
        batch([{"conv": LLAVA_DOCS_PROMPT}, {"conv": "what is this"}]),
        prompts=ONE,
        conversation_column="conv",
    )
    assert out["error"][0] == (
        "prompt: conversation column 'conv' holds a rendered prompt, not JSON messages (Expecting value: line 1 "
        "column 1 (char 0)); use --raw-prompt-column conv to send it to the model verbatim"
    )
    assert out["error"][1] == (
        "prompt: conversation column 'conv' is not JSON messages: Expecting value: line 1 column 1 (char 0)"
    )
    assert out["conversation"].tolist() == [None, None]
