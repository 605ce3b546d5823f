"""Give every input row its prompt(s): one prompt for all, a prompt set (one row per prompt), a per-row prompt
column, a template filled from row fields, a whole conversation column, or a column of prompts already rendered.

Reads `id`, `shard_rows`, `fields` (JSON); writes `prompt`, `prompt_id`, `conversation` (JSON messages; a JSON
string for a rendered prompt, which llava_batch.operators.preprocess uses verbatim; or null),
`generation` (JSON of per-prompt decoding overrides or null), `error`; multiplies rows by the prompt count.
"""

from __future__ import annotations

import json
import string
from typing import Any

import numpy as np

from llava_batch.operators.batch import column, object_array, row_count

# Text that marks a value as a prompt already rendered in some family's format (pipeline/families/prompt_formats.py).
RENDERED_PROMPT_MARKERS = (
    "<image>",
    "USER:",
    "ASSISTANT:",
    "[INST]",
    "<|im_start|>",
    "###Human:",
    "<|start_header_id|>",
)


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
    raw_prompt_column: str | None = None,
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
                    _set_prompt(
                        row, spec["text"], fields, prompt_column, conversation_column, raw_prompt_column
                    )
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
    raw_prompt_column: str | None,
) -> None:
    if conversation_column:
        conversation = fields.get(conversation_column)
        if isinstance(conversation, str):
            conversation = parse_conversation(conversation, conversation_column)
        validate_conversation(conversation)
        row["conversation"] = json.dumps(conversation)
        row["prompt"] = last_user_text(conversation)
    elif raw_prompt_column:
        value = _column_text(fields, raw_prompt_column, "raw prompt")
        row["conversation"] = json.dumps(value)  # a JSON string: the whole prompt, no chat template
        row["prompt"] = value
    elif prompt_column:
        row["prompt"] = _column_text(fields, prompt_column, "prompt")
    else:
        row["prompt"] = fill_template(text, fields)


def _column_text(fields: dict[str, Any], name: str, kind: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{kind} column {name!r} is empty or missing in this row")
    return value


def parse_conversation(text: str, column_name: str) -> Any:
    """JSON messages from a string field; a rendered prompt in their place is named as such, with the flag to use."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        if any(marker in text for marker in RENDERED_PROMPT_MARKERS):
            raise ValueError(
                f"conversation column {column_name!r} holds a rendered prompt, not JSON messages ({error}); "
                f"use --raw-prompt-column {column_name} to send it to the model verbatim"
            ) from None
        raise ValueError(f"conversation column {column_name!r} is not JSON messages: {error}") from None


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
