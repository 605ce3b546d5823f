import json

import numpy as np

from llava_batch.operators.parse_questions import explode_questions, parse_questions


def test_numbering_bullets_and_prefixes_are_stripped():
    reply = (
        "1. What colour is the car?\n2) Where is it parked?\n(3) Who drives it?\n- Is it raining?\nQ5: Why?"
    )
    assert parse_questions(reply, 10) == [
        "What colour is the car?",
        "Where is it parked?",
        "Who drives it?",
        "Is it raining?",
        "Why?",
    ]
    assert parse_questions("Question 1: How many?\n* **Which one?**\na) What else?", 10) == [
        "How many?",
        "Which one?",
        "What else?",
    ]


def test_blank_lines_headers_duplicates_and_the_limit():
    reply = "Here are three questions:\n\n1. What is shown?\n\n2. what  is SHOWN\n3. Where?\n4. When?\n"
    assert parse_questions(reply, 2) == ["What is shown?", "Where?"]
    assert parse_questions(reply, 10) == ["What is shown?", "Where?", "When?"]


def test_a_line_is_kept_whole_and_image_tokens_and_quotes_are_removed():
    assert parse_questions('"<image> A dog runs."', 3) == ["A dog runs."]
    # An unnumbered sentence starting with a letter and a space is not mistaken for "a." enumeration.
    assert parse_questions("A red circle on the left", 3) == ["A red circle on the left"]


def test_a_reply_cut_at_the_token_budget_loses_its_unfinished_last_line():
    assert parse_questions("1. What is it?\n2. Where is th", 5, truncated=True) == ["What is it?"]
    assert parse_questions("What is th", 5, truncated=True) == ["What is th"]
    assert parse_questions("", 5) == [] and parse_questions("\n  \n-\n", 5) == []


def batch(ids, replies, errors=None, shard_rows=3):
    return {
        "id": np.array(ids, dtype=object),
        "shard_id": np.array(["s"] * len(ids), dtype=object),
        "shard_rows": np.array([shard_rows] * len(ids), dtype=object),
        "image_bytes": np.array([None] * len(ids), dtype=object),
        "generated_text": np.array(replies, dtype=object),
        "finish_reason": np.array(["stop"] * len(ids), dtype=object),
        "num_output_tokens": np.array([5] * len(ids), dtype=object),
        "error": np.array(errors or [None] * len(ids), dtype=object),
    }


def test_one_row_per_question_and_one_error_row_per_failed_input():
    out = explode_questions(
        batch(
            ["a.png", "b.png", "c.png"],
            ["1. Why?\n2. How?\n3. Who?", "   ", None],
            [None, None, "decode: bad"],
        ),
        max_questions=2,
    )
    assert list(out["id"]) == ["a.png#q1", "a.png#q2", "b.png", "c.png"]
    assert list(out["input_id"]) == ["a.png", "a.png", "b.png", "c.png"]
    assert list(out["input_rows"]) == [2, 2, 1, 1]
    assert list(out["question"]) == ["Why?", "How?", None, None]
    assert json.loads(out["questions"][0]) == ["Why?", "How?"]
    assert out["error"][2] == "parse: no question found in the model's reply '   '"
    assert list(out["error"][[0, 1, 3]]) == [None, None, "decode: bad"]
    # The stage-1 generation is not an answer: its columns go; bookkeeping stays.
    assert "generated_text" not in out and "num_output_tokens" not in out
    assert list(out["shard_rows"]) == [3, 3, 3, 3]
