import json

import numpy as np

from llava_batch.operators.conversation import (
    continue_conversation,
    finish_conversation,
    follow_up_question,
    llava_conversations,
    start_conversation,
)


def test_follow_ups_are_the_other_questions_then_the_instruction():
    questions = ["A?", "B?", "C?"]
    assert [follow_up_question(questions, "B?", asked, "More.") for asked in (1, 2, 3)] == [
        "C?",
        "A?",
        "More.",
    ]
    assert follow_up_question(["A?"], "A?", 1, "More.") == "More."


def test_llava_format_puts_image_placeholders_in_the_first_human_turn():
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
        {"role": "user", "content": [{"type": "text", "text": "Why?"}]},
    ]
    assert llava_conversations(conversation) == [
        {"from": "human", "value": "<image>\n<image>\nCompare."},
        {"from": "gpt", "value": "Same."},
        {"from": "human", "value": "Why?"},
    ]


def rows(**columns):
    return {name: np.array(values, dtype=object) for name, values in columns.items()}


def test_a_conversation_grows_turn_by_turn_and_ends_in_llava_format():
    batch = rows(
        id=["x#q1", "y"],
        source=["/in/x.png", "/in/y.png"],
        question=["What is it?", None],
        questions=[json.dumps(["What is it?", "Where is it?"]), None],
        image_bytes=[[b"png"], None],
        error=[None, "parse: no question found in the model's reply ''"],
    )
    batch = start_conversation(batch)
    assert json.loads(batch["conversation"][0]) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    assert batch["prompt"][0] == "What is it?" and batch["conversation"][1] is None
    batch |= rows(generated_text=["a circle", None], num_output_tokens=[3, None])
    batch = continue_conversation(batch, follow_up="More.")
    assert batch["prompt"][0] == "Where is it?" and batch["conversation_tokens"][0] == 3
    batch |= rows(generated_text=["on the left", None], num_output_tokens=[4, None])
    out = finish_conversation(batch, settings='{"turns": 2}')
    assert out["conversations"][0] == [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": "a circle"},
        {"from": "human", "value": "Where is it?"},
        {"from": "gpt", "value": "on the left"},
    ]
    assert out["num_output_tokens"][0] == 7 and list(out["image"]) == ["/in/x.png", "/in/y.png"]
    assert out["conversations"][1] is None and out["error"][1].startswith("parse:")
    assert list(out["settings"]) == ['{"turns": 2}'] * 2
