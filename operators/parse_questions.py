"""Split a model's reply to "ask K questions about this image" into questions: one output row per question.

Reads `id`, `generated_text`, `finish_reason`, `error`; writes `id` (`<input id>#q<k>`), `input_id`, `input_rows`,
`question`, `questions` (JSON list of all of the input's questions), `error`; drops the stage-1 generation columns.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from llava_batch.operators.batch import column, object_array, require_columns, row_count

# A list marker at the start of a line: "1.", "1)", "(1)", "-", "*", "•", "Q1:", "Question 2 -", "a)".
LIST_MARKER = re.compile(
    r"^\s*(?:"
    r"(?:q(?:uestion)?\s*\d*\s*[:.)\-]+)"  # Q1: / Question 2. / Q:
    r"|(?:\(?\d+\s*[.):\-]+)"  # 1. / 1) / (1) / 1:
    r"|(?:\(?[a-z]\)|[a-z]\.(?=\s))"  # a) / (a) / a.
    r"|(?:[-*•·–]+)"  # bullets
    r")\s*",
    re.IGNORECASE,
)
IMAGE_PLACEHOLDER = "<image>"
# Columns of the question-writing call that mean nothing for the answer rows that replace its row.
STAGE_ONE_COLUMNS = (
    "generated_text",
    "num_output_tokens",
    "finish_reason",
    "num_input_tokens",
    "num_image_tokens",
)


def clean_line(line: str) -> str:
    """One line without list markers, markdown emphasis, surrounding quotes or `<image>` tokens."""
    text = line.replace(IMAGE_PLACEHOLDER, " ").strip()
    text = text.replace("**", "").replace("__", "").strip()
    text = LIST_MARKER.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return " ".join(text.split())


def question_key(text: str) -> str:
    """Duplicates differ only in case, spacing or final punctuation."""
    return " ".join(text.lower().split()).rstrip(" ?.!")


def parse_questions(reply: str, limit: int, *, truncated: bool = False) -> list[str]:
    """At most `limit` distinct questions, in the reply's order.

    Blank lines and header lines ("Here are three questions:") are skipped. When the reply was cut at the token
    budget (`truncated`), its last line is unfinished and dropped, unless it is the only one.
    """
    lines = [line for line in reply.splitlines() if line.strip()]
    if truncated and len(lines) > 1:
        lines = lines[:-1]
    questions: list[str] = []
    seen: set[str] = set()
    for line in lines:
        text = clean_line(line)
        if not text or text.endswith(":"):
            continue
        key = question_key(text)
        if not key or key in seen:
            continue
        seen.add(key)
        questions.append(text)
        if len(questions) == limit:
            break
    return questions


def explode_questions(batch: dict[str, np.ndarray], *, max_questions: int) -> dict[str, np.ndarray]:
    """One row per parsed question, ids `<input id>#q<k>` (k from 1). An input whose reply holds no question, or
    that failed before, stays one row with its `error` set, so it is counted and written, never dropped."""
    require_columns(batch, ("id", "generated_text"), stage="parse_questions")
    size = row_count(batch)
    errors = column(batch, "error", size)
    replies = column(batch, "generated_text", size)
    finish = column(batch, "finish_reason", size)
    kept = [name for name in batch if name not in STAGE_ONE_COLUMNS]
    rows: list[dict[str, Any]] = []
    for index in range(size):
        base = {name: batch[name][index] for name in kept}
        input_id = str(batch["id"][index])
        questions: list[str] = []
        error = errors[index]
        if error is None:
            reply = str(replies[index] or "")
            questions = parse_questions(reply, max_questions, truncated=finish[index] == "length")
            if not questions:
                error = f"parse: no question found in the model's reply {reply[:200]!r}"
        if error is not None:
            rows.append({**base, "input_id": input_id, "input_rows": 1, "error": error})
            continue
        listed = json.dumps(questions)
        for number, question in enumerate(questions, start=1):
            rows.append(
                {
                    **base,
                    "id": f"{input_id}#q{number}",
                    "input_id": input_id,
                    "input_rows": len(questions),
                    "question": question,
                    "questions": listed,
                    "error": None,
                }
            )
    names = list(dict.fromkeys([*kept, "input_id", "input_rows", "question", "questions", "error"]))
    return {name: object_array([row.get(name) for row in rows]) for name in names}
