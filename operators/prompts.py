"""Give every input row its prompt(s): one prompt for all, a prompt set (one row per prompt), a per-row prompt
column, a template filled from row fields, or a whole conversation column.

Reads `id`, `shard_rows`, `fields` (JSON); writes `prompt`, `prompt_id`, `conversation` (JSON or null),
`generation` (JSON of per-prompt decoding overrides or null), `error`; multiplies rows by the prompt count.
"""

from __future__ import annotations

import json
import string
from typing import Any

import numpy as np

from operators.batch import column, object_array, row_count


def template_fields(text: str) -> list[str]:
    """Names of the `{field}` placeholders in a prompt; `{{` and `}}` are literal braces."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def fill_template(text: str, fields: dict[str, Any]) -> str:
    if "{" not in text and "}" not in text:
        return text
    names = template_fields(text)
    missing = [name for name in names if fields.get(name) is None]
    if missing:
        raise KeyError(f"template field(s) {missing} missing from this row (it has {sorted(fields)})")
    return text.format_map({name: fields[name] for name in names})


def expand_prompts(
    batch: dict[str, np.ndarray],
    *,
    prompts: list[dict[str, Any]],
    prompt_column: str | None = None,
    conversation_column: str | None = None,
) -> dict[str, np.ndarray]:
    """`prompts` holds `{prompt_id, text, generation}` dicts; with more than one, each input becomes that many
    rows, with ids `<input id>#<prompt_id>` so every output row keeps a stable, unique id."""
    size = row_count(batch)
    errors = column(batch, "error", size)
    field_values = column(batch, "fields", size)
    multi = len(prompts) > 1
    out: dict[str, list[Any]] = {name: [] for name in batch}
    for extra in ("prompt", "prompt_id", "conversation", "generation", "error"):
        out[extra] = []
    for index in range(size):
        fields = json.loads(field_values[index]) if field_values[index] else {}
        for spec in prompts:
            row = {name: batch[name][index] for name in batch}
            row.update(prompt=None, conversation=None, error=errors[index])
            row["prompt_id"] = spec["prompt_id"] if multi else None
            row["generation"] = json.dumps(spec["generation"]) if spec.get("generation") else None
            if multi:
                row["id"] = f"{row['id']}#{spec['prompt_id']}"
                row["shard_rows"] = int(row["shard_rows"]) * len(prompts)
            if row["error"] is None:
                try:
                    _set_prompt(row, spec["text"], fields, prompt_column, conversation_column)
                except (KeyError, ValueError, TypeError) as error:
                    row["error"] = f"prompt: {error}"
            for name, value in row.items():
                out[name].append(value)
    return {name: object_array(values) for name, values in out.items()}


def _set_prompt(
    row: dict[str, Any],
    text: str,
    fields: dict[str, Any],
    prompt_column: str | None,
    conversation_column: str | None,
) -> None:
    if conversation_column:
        conversation = fields.get(conversation_column)
        if isinstance(conversation, str):
            conversation = json.loads(conversation)
        validate_conversation(conversation)
        row["conversation"] = json.dumps(conversation)
        row["prompt"] = last_user_text(conversation)
    elif prompt_column:
        value = fields.get(prompt_column)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"prompt column {prompt_column!r} is empty or missing in this row")
        row["prompt"] = value
    else:
        row["prompt"] = fill_template(text, fields)


def validate_conversation(conversation: Any) -> None:
    """The message format of `apply_chat_template`: a list of {role, content} with content a string or items."""
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("conversation must be a non-empty list of messages")
    for message in conversation:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"each message needs role system/user/assistant, got {message!r:.80}")
        content = message.get("content")
        if not isinstance(content, (str, list)):
            raise ValueError(
                f"message content must be a string or a list of items, got {type(content).__name__}"
            )
    if conversation[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user turn for the model to answer")


def last_user_text(conversation: list[dict[str, Any]]) -> str:
    content = conversation[-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(
        item.get("text", "") for item in content if isinstance(item, dict) and item.get("type") == "text"
    )
