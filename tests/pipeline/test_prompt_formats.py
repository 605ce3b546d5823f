"""The prompt-format chat templates render exactly the strings the HF transformers model docs (LLaVA, LLaVA-NeXT, VipLLaVA, LLaVA-Interleave) give."""

from __future__ import annotations

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llava_batch.pipeline.families import ModelInfo
from llava_batch.pipeline.families.prompt_formats import (
    CHAT_TEMPLATES,
    FAMILY_FORMATS,
    PROMPT_FORMATS,
    chat_template,
    fallback_chat_template,
    fallback_format_name,
)

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions."
)
QUESTION = "What is shown in this image?"

# One image, one question, generation prompt on: the strings as the seed docs print them.
SEED_ONE_IMAGE = {
    # seed 002: "USER: <image>\n<prompt> ASSISTANT:"
    "llava": "USER: <image>\nWhat is shown in this image? ASSISTANT:",
    # seed 003: "<system>###Human: <image>\n<prompt>###Assistant:"
    "vipllava": VICUNA_SYSTEM + "###Human: <image>\nWhat is shown in this image?###Assistant:",
    # seed 001, verbatim
    "llava_next_mistral": "[INST] <image>\nWhat is shown in this image? [/INST]",
    "llava_next_vicuna": (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nWhat is shown in this image? ASSISTANT:"
    ),
    "llava_next_34b": (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is shown in this image?"
        "<|im_end|><|im_start|>assistant\n"
    ),
    "llava_next_llama3": (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. You are able "
        "to understand the visual content that the user provides, and assist the user with a variety of tasks using "
        "natural language.<|eot_id|><|start_header_id|><|start_header_id|>user<|end_header_id|>\n\n<image>\n"
        "What is shown in this image?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "llava_next_qwen": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "What is shown in this image?<|im_end|>\n<|im_start|>assistant\n"
    ),
    # seed 002, verbatim (seed 004 agrees)
    "llava_interleave": "<|im_start|>user <image>\nWhat is shown in this image?<|im_end|><|im_start|>assistant",
}
# Where a seed contradicts itself or its model, the format departs from it on purpose (see prompt_formats.py).
SEED_TYPOS = {
    # The doc doubles "<|start_header_id|>" before "user"; LLaVA-NeXT's llama_3 template has it once.
    "llava_next_llama3": ("<|start_header_id|><|start_header_id|>user", "<|start_header_id|>user"),
}


def render(template: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render as transformers does: a sandboxed environment with trim_blocks and lstrip_blocks on."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def user(text: str, images: int = 1) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def test_every_format_has_a_seed_string() -> None:
    assert set(SEED_ONE_IMAGE) == set(PROMPT_FORMATS) == set(CHAT_TEMPLATES)
    assert set(FAMILY_FORMATS.values()) <= set(PROMPT_FORMATS)


@pytest.mark.parametrize("name", sorted(SEED_ONE_IMAGE))
def test_one_image_prompt_matches_seed(name: str) -> None:
    expected = SEED_ONE_IMAGE[name]
    if name in SEED_TYPOS:
        wrong, right = SEED_TYPOS[name]
        assert wrong in expected
        expected = expected.replace(wrong, right)
    assert render(chat_template(name), [user(QUESTION)]) == expected


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_template_renders_the_same_in_transformers(name: str) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    conversation = [user(QUESTION, images=2), assistant("A sign."), user("And now?")]
    rendered, _ = render_jinja_template(
        conversations=[conversation], chat_template=CHAT_TEMPLATES[name], add_generation_prompt=True
    )
    assert rendered[0] == render(CHAT_TEMPLATES[name], conversation)


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_template_has_no_raw_newline(name: str) -> None:
    # transformers renders with trim_blocks/lstrip_blocks, which would eat a newline after a block tag.
    assert "\n" not in CHAT_TEMPLATES[name]


@pytest.mark.parametrize("name", sorted(SEED_ONE_IMAGE))
def test_two_images_render_two_placeholders_before_the_text(name: str) -> None:
    one = render(chat_template(name), [user(QUESTION)])
    two = render(chat_template(name), [user(QUESTION, images=2)])
    assert two == one.replace("<image>", "<image><image>")
    assert two.count("<image>") == 2


def test_interleave_two_images_after_the_text_as_in_seed_004() -> None:
    # Seed 004 lists the text first and the images after; the template puts the images first, then "\n".
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What are these?"}, {"type": "image"}, {"type": "image"}],
        }
    ]
    # seed 004: "<|im_start|>user <image><image>\n...?|im_end|><|im_start|>assistant" (its "|im_end|>" lacks "<")
    expected = "<|im_start|>user <image><image>\nWhat are these?<|im_end|><|im_start|>assistant"
    assert render(chat_template("llava_interleave"), messages) == expected


def test_two_turns_llava_matches_seed_002() -> None:
    messages = [
        user("<prompt1>"),
        assistant("<answer1>"),
        user("<prompt2>", images=0),
        assistant("<answer2>"),
        user("<prompt3>", images=0),
    ]
    expected = (
        "USER: <image>\n<prompt1> ASSISTANT: <answer1></s>USER: <prompt2> ASSISTANT: <answer2></s>"
        "USER: <prompt3> ASSISTANT:"
    )
    assert render(chat_template("llava"), messages) == expected


def test_two_turns_vipllava_matches_seed_003() -> None:
    messages = [user("<prompt1>"), assistant("<answer1>"), user("<prompt2>", images=0)]
    expected = (
        VICUNA_SYSTEM + "###Human: <image>\n<prompt1>###Assistant: <answer1>###Human: <prompt2>###Assistant:"
    )
    assert render(chat_template("vipllava"), messages) == expected


def test_two_turns_mistral_matches_seed_001() -> None:
    messages = [
        user("What's shown in this image?"),
        assistant("This image shows a red stop sign."),
        user("Describe the image in more details.", images=0),
    ]
    expected = (
        "[INST] <image>\nWhat's shown in this image? [/INST] This image shows a red stop sign. "
        "[INST] Describe the image in more details. [/INST]"
    )
    assert render(chat_template("llava_next_mistral"), messages) == expected


def test_two_turns_interleave_matches_seed_002() -> None:
    messages = [user("<prompt1>"), assistant("<answer1>"), user("<prompt1>")]
    seed = (
        "<|im_start|>user <image>\n<prompt1><|im_end|><|im_start|>assistant <answer1><|im_end|>"
        "<|im_start|>user <image>\n<prompt1><|im_end|><|im_start|>assistant "
    )
    # The seed's multi-turn example ends "assistant " where its one-turn example has no space: no space here.
    assert render(chat_template("llava_interleave"), messages) == seed.rstrip(" ")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "llava_next_vicuna",
            VICUNA_SYSTEM + " USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:",
        ),
        (
            "llava_next_34b",
            "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nQ1<|im_end|>"
            "<|im_start|>assistant\nA1<|im_end|><|im_start|>user\nQ2<|im_end|><|im_start|>assistant\n",
        ),
        (
            "llava_next_qwen",
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nQ1<|im_end|>\n"
            "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            "llava_next_llama3",
            SEED_ONE_IMAGE["llava_next_llama3"]
            .replace(*SEED_TYPOS["llava_next_llama3"])
            .replace(QUESTION, "Q1")
            + "A1<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
    ],
)
def test_two_turns_other_next_formats(name: str, expected: str) -> None:
    # The seeds give these one-turn only; an answer closes its turn the way the format closes a user turn.
    messages = [user("Q1"), assistant("A1"), user("Q2", images=0)]
    assert render(chat_template(name), messages) == expected


@pytest.mark.parametrize("name", sorted(CHAT_TEMPLATES))
def test_generation_prompt_only_when_asked(name: str) -> None:
    with_prompt = render(chat_template(name), [user(QUESTION)], add_generation_prompt=True)
    without = render(chat_template(name), [user(QUESTION)], add_generation_prompt=False)
    assert with_prompt == without + PROMPT_FORMATS[name].generation_prompt


def test_plain_string_content_and_system_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert render(chat_template("llava_next_vicuna"), messages) == "Be brief. USER: Hi ASSISTANT:"
    assert render(chat_template("llava"), messages) == "Be brief. USER: Hi ASSISTANT:"
    assert render(chat_template("llava_next_34b"), messages).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>"
    )
    with pytest.raises(jinja2.exceptions.TemplateError, match="no system message"):
        render(chat_template("llava_next_mistral"), messages)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(jinja2.exceptions.TemplateError, match="unexpected message role tool"):
        render(chat_template("llava"), [user(QUESTION), {"role": "tool", "content": "x"}])


@pytest.mark.parametrize(
    ("model_type", "text_model_type", "name", "expected"),
    [
        ("llava", "llama", "llava-hf/llava-1.5-7b-hf", "llava"),
        ("llava", "qwen2", "llava-hf/llava-interleave-qwen-0.5b-hf", "llava_interleave"),
        ("vipllava", "llama", "llava-hf/vip-llava-7b-hf", "vipllava"),
        ("llava_next", "mistral", "llava-hf/llava-v1.6-mistral-7b-hf", "llava_next_mistral"),
        ("llava_next", "llama", "llava-hf/llava-v1.6-vicuna-13b-hf", "llava_next_vicuna"),
        ("llava_next", "llama", "llava-hf/llava-v1.6-34b-hf", "llava_next_34b"),
        ("llava_next", "llama", "llava-hf/llama3-llava-next-8b-hf", "llava_next_llama3"),
        ("llava_next", "qwen2", "llava-hf/llava-next-72b-hf", "llava_next_qwen"),
        ("llava_next", "qwen2", "llava-hf/llava-next-110b-hf", "llava_next_qwen"),
        ("llava_next", "llama", "/models/some-finetune", "llava_next_vicuna"),
    ],
)
def test_fallback_format_name(model_type: str, text_model_type: str, name: str, expected: str) -> None:
    assert fallback_format_name(model_type, text_model_type, name) == expected


def test_fallback_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="llava_next"):
        fallback_format_name("idefics2", "mistral", "HuggingFaceM4/idefics2-8b")
    with pytest.raises(ValueError, match="known formats: llava, vipllava"):
        chat_template("llava2")


def test_fallback_chat_template_from_model_info() -> None:
    info = ModelInfo("llava-hf/llava-v1.6-34b-hf", "llava_next", "llava_next", "llama", "clip_vision_model")
    assert fallback_chat_template(info) == CHAT_TEMPLATES["llava_next_34b"]
