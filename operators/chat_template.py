"""Render a user's text or conversation (and its images) into the model's prompt string with the chat template.

Images go where `<image>` placeholders put them, else first in the first user turn; checkpoints without a template
use the family's format.
"""

from __future__ import annotations

from typing import Any

Conversation = list[dict[str, Any]]


IMAGE_PLACEHOLDER = "<image>"


def content_items(text: str) -> list[dict[str, Any]]:
    """A user text as content items: each `<image>` placeholder becomes an image item where it stands, the text
    around them text items ("Compare <image> with <image>." -> text, image, text, image, text)."""
    if IMAGE_PLACEHOLDER not in text:
        return [{"type": "text", "text": text}]
    content: list[dict[str, Any]] = []
    for position, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if position:
            content.append({"type": "image"})
        if part.strip():
            content.append({"type": "text", "text": part.strip()})
    return content


def user_turn(text: str, num_images: int = 1) -> Conversation:
    """The one-turn conversation for a row: image item(s) first, then the text.

    A text that writes `<image>` placeholders itself ("Compare <image> with <image>.") places the image items
    there instead; the row must then hold exactly that many images.
    """
    return place_images([{"role": "user", "content": text}], num_images)


def place_images(conversation: Conversation, num_images: int) -> Conversation:
    """A conversation with the row's images placed by the one rule every prompt source follows (README, Prompts):
    images go where `<image>` placeholders or image items put them; a conversation that places none gets all of
    the row's images first in its first user turn.

    Every string content becomes content items, because checkpoint templates (llava-hf's among them) render only
    image and text items; in user turns, `<image>` written in a string or a text item becomes an image item there.
    """
    placed = [{**message, "content": _message_items(message)} for message in conversation]
    if num_images and count_images(placed) == 0:
        first_user = next((i for i, message in enumerate(placed) if message.get("role") == "user"), None)
        if first_user is not None:
            images = [{"type": "image"} for _ in range(num_images)]
            placed[first_user] = {**placed[first_user], "content": images + placed[first_user]["content"]}
    return placed


def _message_items(message: dict[str, Any]) -> list[Any]:
    content = message.get("content")
    items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    if message.get("role") != "user":
        return items
    out: list[Any] = []
    for item in items:
        is_text = isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
        out.extend(content_items(item["text"]) if is_text else [item])
    return out


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
