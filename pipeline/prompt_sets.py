"""Prompt sets (`--prompts-file`): several prompts per input, each with an id and optional decoding settings.

Accepted files: YAML or JSON (a list of `{id, text, max_new_tokens?, temperature?, top_p?}` or of plain strings),
or a `.txt` file with one prompt per line. Plain strings get ids p0, p1, ...
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llava_batch.pipeline.config import (
    ConfigError,
    GenerationSettings,
    check_template,
    post_init_next,
    setting,
)

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p")
# The per-row prompt sources; at most one may be set (else every row gets `prompt`, or the prompts file's set).
PROMPT_SOURCES = ("prompts_file", "prompt_column", "conversation_column", "raw_prompt_column")
PROMPT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class PromptSpec:
    prompt_id: str
    text: str
    generation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "text": self.text, "generation": dict(self.generation)}


@dataclass
class PromptSettings:
    """Where each row's prompt comes from: one `prompt` (a template over row fields), a prompts file (several
    prompts per input), or a column holding a user text, a conversation, or a fully rendered prompt.

    Shared by the caption job and the Python API's processor (llava_batch.api)."""

    prompt: str = setting(
        "Describe this image.",
        "the user text sent with every image; {field} placeholders are filled from the row",
    )
    prompts_file: str | None = setting(
        None, "YAML/JSON/TXT list of prompts: one output row per input and prompt"
    )
    prompt_column: str | None = setting(None, "take each row's prompt from this input field")
    conversation_column: str | None = setting(
        None, "take each row's whole conversation (apply_chat_template messages) from this field"
    )
    raw_prompt_column: str | None = setting(
        None, "take each row's fully rendered prompt from this field, sent verbatim (no chat template)"
    )
    visual_prompt_column: str | None = setting(
        None, "field with a VipLLaVA visual prompt annotation to draw on the image"
    )
    prompt_set: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError(f"prompt: must be a non-empty string (got {self.prompt!r})")
        check_template("prompt", self.prompt)
        for name in (*PROMPT_SOURCES[1:], "visual_prompt_column"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{name}: {value!r} must name an input column")
        sources = [name for name in PROMPT_SOURCES if getattr(self, name)]
        if len(sources) > 1:
            raise ConfigError(
                f"{sources[1]}: cannot be combined with {sources[0]}; choose one source of prompts"
            )
        if self.prompts_file is not None:
            self.prompt_set = load_prompts_file(self.prompts_file)
        post_init_next(self, PromptSettings)

    def prompt_specs(self) -> list[PromptSpec]:
        """The prompt set, or the one `prompt` (a template when it names `{fields}`)."""
        return self.prompt_set or [PromptSpec("p0", self.prompt)]

    def prompt_stage_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of llava_batch.operators.prompts.expand_prompts."""
        return {
            "prompts": [spec.to_dict() for spec in self.prompt_specs()],
            "prompt_column": self.prompt_column,
            "conversation_column": self.conversation_column,
            "raw_prompt_column": self.raw_prompt_column,
        }


def load_prompts_file(path: str) -> list[PromptSpec]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts_file: {path!r} does not exist")
    text = file.read_text()
    if file.suffix.lower() == ".txt":
        entries: Any = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            entries = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise ConfigError(
                f"prompts_file: {path!r} is not valid {file.suffix[1:].upper()}: {error}"
            ) from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"prompts_file: {path!r} must hold a non-empty list of prompts")
    prompts = [_prompt_spec(index, entry, path) for index, entry in enumerate(entries)]
    ids = [prompt.prompt_id for prompt in prompts]
    duplicates = sorted({prompt_id for prompt_id in ids if ids.count(prompt_id) > 1})
    if duplicates:
        raise ConfigError(f"prompts_file: prompt ids must be unique; repeated: {duplicates}")
    return prompts


def _prompt_spec(index: int, entry: Any, path: str) -> PromptSpec:
    where = f"prompts_file: {path!r} entry {index}"
    if isinstance(entry, str):
        entry = {"text": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a string or a mapping with 'text', got {type(entry).__name__}")
    unknown = sorted(set(entry) - {"id", "text", *GENERATION_KEYS})
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed: id, text, {', '.join(GENERATION_KEYS)}"
        )
    text = entry.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: 'text' must be a non-empty string")
    prompt_id = str(entry.get("id", f"p{index}"))
    if not PROMPT_ID.match(prompt_id):
        raise ConfigError(f"{where}: id {prompt_id!r} must be 1-64 letters, digits, '_', '.' or '-'")
    from llava_batch.pipeline.config import check_template

    try:
        check_template("text", text)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    generation = {key: entry[key] for key in GENERATION_KEYS if key in entry}
    try:
        GenerationSettings(**generation)  # validates the values with the job-level rules
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return PromptSpec(prompt_id, text, generation)
