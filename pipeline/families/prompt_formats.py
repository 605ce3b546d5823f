"""The LLaVA-family prompt formats as Jinja chat templates, written out exactly as the model docs give them.

Used as the chat template of the tiny test models and as the fallback for checkpoints whose processor has none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

_VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class PromptFormat:
    """One family's turn layout. A turn renders as prefix + body + suffix, where the body of a turn is its
    `<image>` placeholders (one per image item, all before the text, as the HF templates do), a newline after
    them when there are any, then its text items joined by a space.

    `system` is the default system text, rendered as system_prefix + text + system_suffix before the first turn;
    a leading {"role": "system"} message replaces it. None means the format has no system line by default.
    """

    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation_prompt: str
    system: str | None = None
    system_prefix: str = ""
    system_suffix: str = ""
    # Mistral's [INST] format has no place for a system message: refuse one rather than drop it silently.
    accepts_system: bool = True


# Each format below was checked character by character against the seed docs (seeds 000-004); the strings
# they quote are in tests/pipeline/test_prompt_formats.py. Where a doc contradicts itself the choice is noted.
PROMPT_FORMATS: dict[str, PromptFormat] = {
    # LLaVA-1.5: "USER: <image>\n<prompt> ASSISTANT:", answers end with </s> (seed 002; seed 000's older
    # "<prompt>ASSISTANT:" without the space is superseded by it and by the HF checkpoints' own template).
    "llava": PromptFormat(
        user_prefix="USER: ",
        user_suffix=" ",
        assistant_prefix="ASSISTANT: ",
        assistant_suffix="</s>",
        generation_prompt="ASSISTANT:",
        system_suffix=" ",
    ),
    # VipLLaVA: vicuna system line glued to "###Human: <image>\n<prompt>###Assistant:" (seed 003).
    "vipllava": PromptFormat(
        user_prefix="###Human: ",
        user_suffix="",
        assistant_prefix="###Assistant: ",
        assistant_suffix="",
        generation_prompt="###Assistant:",
        system=_VICUNA_SYSTEM,
    ),
    # LLaVA-NeXT Mistral: "[INST] <image>\n<prompt> [/INST]"; an answer follows with a space either side
    # (seed 001's multi-turn example). The prompt ends at [/INST], so there is no separate generation prompt.
    "llava_next_mistral": PromptFormat(
        user_prefix="[INST] ",
        user_suffix=" [/INST]",
        assistant_prefix=" ",
        assistant_suffix=" ",
        generation_prompt="",
        accepts_system=False,
    ),
    # LLaVA-NeXT Vicuna 7B/13B: the vicuna system line, a space, then the LLaVA-1.5 turns (seed 001).
    "llava_next_vicuna": PromptFormat(
        user_prefix="USER: ",
        user_suffix=" ",
        assistant_prefix="ASSISTANT: ",
        assistant_suffix="</s>",
        generation_prompt="ASSISTANT:",
        system=_VICUNA_SYSTEM,
        system_suffix=" ",
    ),
    # LLaVA-NeXT 34B: ChatML with no newline between turns (seed 001).
    "llava_next_34b": PromptFormat(
        user_prefix="<|im_start|>user\n",
        user_suffix="<|im_end|>",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>",
        generation_prompt="<|im_start|>assistant\n",
        system="Answer the questions.",
        system_prefix="<|im_start|>system\n",
        system_suffix="<|im_end|>",
    ),
    # LLaMA-3 LLaVA-NeXT 8B (seed 001). The doc's string has "<|start_header_id|>" twice before "user"; that is
    # a typo (LLaVA-NeXT's own llama_3 conversation template and the Llama-3 format have it once), so one here.
    "llava_next_llama3": PromptFormat(
        user_prefix="<|start_header_id|>user<|end_header_id|>\n\n",
        user_suffix="<|eot_id|>",
        assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_suffix="<|eot_id|>",
        generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
        system=_LLAMA3_SYSTEM,
        system_prefix="<|start_header_id|>system<|end_header_id|>\n\n",
        system_suffix="<|eot_id|>",
    ),
    # LLaVA-NeXT 72B/110B (Qwen): ChatML with a newline after every <|im_end|> (seed 001).
    "llava_next_qwen": PromptFormat(
        user_prefix="<|im_start|>user\n",
        user_suffix="<|im_end|>\n",
        assistant_prefix="<|im_start|>assistant\n",
        assistant_suffix="<|im_end|>\n",
        generation_prompt="<|im_start|>assistant\n",
        system="You are a helpful assistant.",
        system_prefix="<|im_start|>system\n",
        system_suffix="<|im_end|>\n",
    ),
    # LLaVA-Interleave (Qwen): "<|im_start|>user <image>\n<prompt><|im_end|><|im_start|>assistant", several
    # images as "<image><image>\n" (seeds 002 and 004). Seed 002's multi-turn example ends "assistant " with a
    # trailing space where its one-turn example (and seed 004, three times) has none: no space here.
    "llava_interleave": PromptFormat(
        user_prefix="<|im_start|>user ",
        user_suffix="<|im_end|>",
        assistant_prefix="<|im_start|>assistant ",
        assistant_suffix="<|im_end|>",
        generation_prompt="<|im_start|>assistant",
        system_prefix="<|im_start|>system ",
        system_suffix="<|im_end|>",
    ),
}

# The format each tiny test model family carries (pipeline/families/tiny_models.py).
FAMILY_FORMATS: dict[str, str] = {
    "llava": "llava",
    "llava_next": "llava_next_mistral",
    "vipllava": "vipllava",
    "llava_interleave": "llava_interleave",
}


def _jinja_string(text: str) -> str:
    """A Jinja string literal for `text`. Jinja decodes Python-style escapes, so newlines stay on one line and
    the template has no raw newlines for trim_blocks/lstrip_blocks (which transformers turns on) to eat."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def _emit(text: str) -> str:
    return f"{{{{ {_jinja_string(text)} }}}}" if text else ""


def to_chat_template(fmt: PromptFormat) -> str:
    """Compile a PromptFormat to a one-line Jinja chat template in the messages format of apply_chat_template."""
    # Content may be a plain string or a list of {"type": "image"} / {"type": "text", "text": ...} items.
    body = (
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% set images = message['content'] | selectattr('type', 'equalto', 'image') | list %}"
        "{{ '<image>' * (images | length) }}{% if images %}{{ '\\n' }}{% endif %}"
        "{{ message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }}"
        "{% endif %}"
    )
    if fmt.accepts_system:
        first = "messages[0]['content']"
        system_text = (
            f"{first} if {first} is string else "
            f"{first} | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')"
        )
        system = (
            "{% if messages and messages[0]['role'] == 'system' %}"
            f"{_emit(fmt.system_prefix)}{{{{ {system_text} }}}}{_emit(fmt.system_suffix)}"
        )
        if fmt.system is not None:
            system += "{% else %}" + _emit(fmt.system_prefix + fmt.system + fmt.system_suffix)
        system += "{% endif %}"
    else:
        system = (
            "{% if messages and messages[0]['role'] == 'system' %}"
            "{{ raise_exception('this prompt format has no system message') }}{% endif %}"
        )
    turns = (
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        f"{_emit(fmt.user_prefix)}{body}{_emit(fmt.user_suffix)}"
        "{% elif message['role'] == 'assistant' %}"
        f"{_emit(fmt.assistant_prefix)}{body}{_emit(fmt.assistant_suffix)}"
        "{% elif message['role'] != 'system' or not loop.first %}"
        "{{ raise_exception('unexpected message role ' + message['role'] + ': expected user or assistant') }}"
        "{% endif %}"
        "{% endfor %}"
    )
    # An empty generation prompt (Mistral's [INST] format ends at [/INST]) still honours the flag: it adds nothing.
    generation = f"{{% if add_generation_prompt %}}{_emit(fmt.generation_prompt)}{{% endif %}}"
    return system + turns + generation


CHAT_TEMPLATES: dict[str, str] = {name: to_chat_template(fmt) for name, fmt in PROMPT_FORMATS.items()}


def chat_template(name: str) -> str:
    """The Jinja chat template of a named format; the error lists the names there are."""
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown prompt format {name!r}; known formats: {', '.join(CHAT_TEMPLATES)}"
        ) from None


def fallback_format_name(model_type: str, text_model_type: str, name_or_path: str) -> str:
    """The prompt format a checkpoint was trained with, guessed from its config and name.

    LLaVA-NeXT checkpoints differ only in their text model, so the text model type and the checkpoint name
    (e.g. llava-v1.6-34b-hf, llama3-llava-next-8b-hf, llava-next-72b-hf) pick the format.
    """
    name = name_or_path.lower()
    text = (text_model_type or "").lower()
    if model_type == "vipllava":
        return "vipllava"
    if model_type == "llava":
        # LLaVA-Interleave is `llava` with a Qwen2 text model.
        if text.startswith("qwen") or "interleave" in name:
            return "llava_interleave"
        return "llava"
    if model_type == "llava_next":
        # 34B is a Yi (model_type llama) model: only its name tells it apart from Vicuna.
        if "34b" in name:
            return "llava_next_34b"
        if text == "mistral" or "mistral" in name:
            return "llava_next_mistral"
        if text.startswith("qwen") or "72b" in name or "110b" in name:
            return "llava_next_qwen"
        if "llama3" in name or "llama-3" in name:
            return "llava_next_llama3"
        # Vicuna is the 7B/13B default. Only used when the checkpoint has no template of its own, and
        # PreprocessForModel logs it then.
        return "llava_next_vicuna"
    raise ValueError(
        f"no fallback prompt format for model_type {model_type!r}; known model types: llava, llava_next, vipllava"
    )


class _HasModelTypes(Protocol):
    model_type: str
    text_model_type: str
    name_or_path: str


def fallback_chat_template(model: _HasModelTypes) -> str:
    """The fallback chat template for a checkpoint described by e.g. llava_batch.pipeline.families.ModelInfo."""
    return chat_template(fallback_format_name(model.model_type, model.text_model_type, model.name_or_path))
