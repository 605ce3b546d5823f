"""Render a user's text (and its images) into the model's prompt string with the processor's chat template.

The user turn holds the image items first, then the text; checkpoints without a template use the family's format.
"""

from __future__ import annotations

from typing import Any

Conversation = list[dict[str, Any]]


IMAGE_PLACEHOLDER = "<image>"


def user_turn(text: str, num_images: int = 1) -> Conversation:
    """The one-turn conversation for a row: image item(s) first, then the text.

    A text that writes `<image>` placeholders itself ("Compare <image> with <image>.") places the image items
    there instead; the row must then hold exactly that many images.
    """
    if IMAGE_PLACEHOLDER in text:
        content: list[dict[str, Any]] = []
        for position, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if position:
                content.append({"type": "image"})
            if part.strip():
                content.append({"type": "text", "text": part.strip()})
        return [{"role": "user", "content": content}]
    content = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def render_prompt(processor: Any, conversation: Conversation, fallback_template: str | None = None) -> str:
    """Prompt text with a generation prompt appended, exactly as the checkpoint's template renders it."""
    template = getattr(processor, "chat_template", None) or fallback_template
    if template is None:
        raise ValueError(
            "the processor has no chat_template and no fallback format was given; "
            "add a chat template to the checkpoint or pick a prompt format"
        )
    return processor.apply_chat_template(
        conversation, chat_template=template, add_generation_prompt=True, tokenize=False
    )


def count_images(conversation: Conversation) -> int:
    return sum(
        1
        for message in conversation
        for item in (message.get("content") if isinstance(message.get("content"), list) else [])
        if isinstance(item, dict) and item.get("type") == "image"
    )
