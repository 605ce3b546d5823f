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

from llava_batch.pipeline.config import ConfigError, GenerationSettings

GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p")
PROMPT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class PromptSpec:
    prompt_id: str
    text: str
    generation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "text": self.text, "generation": dict(self.generation)}


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
