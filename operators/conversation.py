"""Grow one conversation per question, turn by turn, and write it out in LLaVA's instruction-data format.

Reads `question`, `questions`, `image_bytes`, `conversation` (JSON messages), `generated_text`, `num_output_tokens`,
`source`, `error`; writes `conversation`, `prompt`, `conversation_tokens`, and at the end `conversations`
(`[{from: human|gpt, value}]`, `<image>` in the first human turn), `image`, `settings`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from llava_batch.operators.batch import column, require_columns, row_count
from llava_batch.operators.chat_template import IMAGE_PLACEHOLDER, Conversation, user_turn

ROLE_NAMES = {"user": "human", "assistant": "gpt"}


def image_count(image_bytes: Any) -> int:
    if image_bytes is None:
        return 0
    return len(image_bytes) if isinstance(image_bytes, (list, tuple, np.ndarray)) else 1


def follow_up_question(questions: list[str], question: str, asked: int, follow_up: str) -> str:
    """The user text of turn `asked + 1`: the input's other questions not yet asked in this conversation (those
    after its own first, wrapping round), then the configured follow-up instruction."""
    own = questions.index(question) if question in questions else -1
    others = questions[own + 1 :] + questions[: max(own, 0)]
    return others[asked - 1] if asked - 1 < len(others) else follow_up


def with_answer(conversation: Conversation, answer: str) -> Conversation:
    return [*conversation, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def llava_conversations(conversation: Conversation) -> list[dict[str, str]]:
    """Chat messages -> LLaVA's `[{from, value}]`; image items become `<image>` lines where they stood (first)."""
    turns = []
    for message in conversation:
        content = message["content"]
        if isinstance(content, str):
            value = content
        else:
            parts = [
                IMAGE_PLACEHOLDER if item.get("type") == "image" else str(item.get("text", ""))
                for item in content
                if isinstance(item, dict)
            ]
            value = "\n".join(part for part in parts if part)
        turns.append({"from": ROLE_NAMES[message["role"]], "value": value})
    return turns


def start_conversation(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn 1: the row's images and its question, as the chat template's user turn."""
    require_columns(batch, ("question", "image_bytes"), stage="start_conversation")
    size = row_count(batch)
    errors = column(batch, "error", size)
    conversations = np.full(size, None, dtype=object)
    prompts = column(batch, "prompt", size)
    tokens = np.full(size, None, dtype=object)
    for index in range(size):
        if errors[index] is not None:
            continue
        question = str(batch["question"][index])
        conversations[index] = json.dumps(user_turn(question, image_count(batch["image_bytes"][index])))
        prompts[index] = question
        tokens[index] = 0
    return {
        **batch,
        "conversation": conversations,
        "prompt": prompts,
        "conversation_tokens": tokens,
        "error": errors,
    }


def continue_conversation(batch: dict[str, np.ndarray], *, follow_up: str) -> dict[str, np.ndarray]:
    """Append the model's answer, then the next user turn (see `follow_up_question`)."""
    require_columns(
        batch, ("conversation", "generated_text", "questions", "question"), stage="continue_conversation"
    )
    size = row_count(batch)
    errors = column(batch, "error", size)
    conversations = column(batch, "conversation", size)
    prompts = column(batch, "prompt", size)
    tokens = column(batch, "conversation_tokens", size)
    for index in range(size):
        if errors[index] is not None:
            continue
        conversation = with_answer(json.loads(conversations[index]), str(batch["generated_text"][index]))
        asked = sum(1 for message in conversation if message["role"] == "user")
        text = follow_up_question(
            json.loads(batch["questions"][index]), str(batch["question"][index]), asked, follow_up
        )
        conversation.append({"role": "user", "content": [{"type": "text", "text": text}]})
        conversations[index] = json.dumps(conversation)
        prompts[index] = text
        tokens[index] = int(tokens[index] or 0) + int(batch["num_output_tokens"][index] or 0)
    return {
        **batch,
        "conversation": conversations,
        "prompt": prompts,
        "conversation_tokens": tokens,
        "error": errors,
    }


def finish_conversation(batch: dict[str, np.ndarray], *, settings: str) -> dict[str, np.ndarray]:
    """Append the last answer and write the LLaVA `conversations`, the `image` source and the job `settings`;
    `num_output_tokens` becomes the tokens generated over all turns."""
    require_columns(batch, ("conversation", "generated_text", "source"), stage="finish_conversation")
    size = row_count(batch)
    errors = column(batch, "error", size)
    conversations = column(batch, "conversation", size)
    tokens = column(batch, "num_output_tokens", size)
    previous = column(batch, "conversation_tokens", size)
    llava = np.full(size, None, dtype=object)
    for index in range(size):
        if errors[index] is not None or conversations[index] is None:
            continue
        conversation = with_answer(json.loads(conversations[index]), str(batch["generated_text"][index]))
        llava[index] = llava_conversations(conversation)
        tokens[index] = int(previous[index] or 0) + int(tokens[index] or 0)
    return {
        **batch,
        "conversations": llava,
        "image": batch["source"],
        "settings": np.full(size, settings, dtype=object),
        "num_output_tokens": tokens,
        "error": errors,
    }
