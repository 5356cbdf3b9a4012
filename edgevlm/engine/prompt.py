"""Chat messages -> the prompt string SmolVLM2 was trained on, with image tokens expanded.

The model's own chat template (from the model folder) is rendered with jinja2, as transformers does, so a model with
a different template is honoured; images in the rendered text are then expanded to the token blocks the
processor would write (tile grid rows and columns, global image).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

IMAGE = "<image>"
VIDEO = "<video>"
FAKE = "<fake_token_around_image>"
GLOBAL = "<global-img>"

FALLBACK_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass
class ImageSlot:
    """Where one image sits in the prompt and how its tiles were cut."""

    rows: int
    cols: int


def image_block(rows: int, cols: int, seq_len: int) -> str:
    """The expansion of one `<image>`: same text as transformers' get_image_prompt_string."""
    if rows == 0 and cols == 0:
        return f"{FAKE}{GLOBAL}{IMAGE * seq_len}{FAKE}"
    out = ""
    for r in range(rows):
        for c in range(cols):
            out += f"{FAKE}<row_{r + 1}_col_{c + 1}>{IMAGE * seq_len}"
        out += "\n"
    return out + f"\n{FAKE}{GLOBAL}{IMAGE * seq_len}{FAKE}"


@dataclass
class VideoSlot:
    """Where one video sits in the prompt: its sampled frames' times and the clip's length, in seconds."""

    timestamps: list[float]
    duration: float


def video_block(slot: VideoSlot, seq_len: int) -> str:
    """The expansion of one `<video>`: same text as transformers' expand_text_with_video_tokens."""
    from datetime import timedelta

    from num2words import num2words

    out = (
        f"You are provided the following series of {num2words(len(slot.timestamps))} frames from a "
        f"{timedelta(seconds=int(slot.duration))} [H:MM:SS] video.\n"
    )
    for t in slot.timestamps:
        out += f"\nFrame from {int(t // 60):02d}:{int(t % 60):02d}:" + image_block(0, 0, seq_len)
    return out + "\n\n"


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accept {"role", "content": str | list[item]} messages; items are {"type": "text"|"image", ...}."""
    out = []
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"each message needs 'role' and 'content'; got {m!r}.")
        if m["role"] not in ("system", "user", "assistant"):
            raise InputError(f"role must be system, user or assistant; got {m['role']!r}.")
        content = m["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, (list, tuple)):
            raise InputError(f"message content is a string or a list of items; got {type(content).__name__}.")
        for item in content:
            if not isinstance(item, dict) or item.get("type") not in ("text", "image", "video"):
                raise InputError(f"content items are {{'type': 'text'|'image'|'video', ...}} dicts; got {item!r}.")
            if item["type"] == "text":
                check_text(item.get("text"))
        if not content:
            raise InputError(f"message of role {m['role']!r} has empty content.")
        out.append({"role": m["role"], "content": list(content)})
    return out


RESERVED = (IMAGE, VIDEO, FAKE, GLOBAL)


def check_text(text: Any) -> None:
    """Text must be a str that encodes as UTF-8 and holds none of the tokens that mark where images go: a literal
    `<image>` in a question would be counted as an image slot (transformers refuses it too)."""
    if not isinstance(text, str):
        raise InputError(f"a text item needs 'text' as a string; got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the text is not valid UTF-8 (undecodable bytes); check its encoding.") from None
    for token in RESERVED:
        if token in text:
            raise InputError(
                f"the text contains {token!r}, which the model reserves for image positions; remove it "
                f"(pass images as image items or files, not as text)."
            )


def render(
    messages: list[dict[str, Any]],
    template: str | None,
    add_generation_prompt: bool = True,
    special_tokens: dict[str, Any] | None = None,
) -> str:
    """The template rendered as transformers does: the messages, the generation flag and the tokenizer's special
    tokens (a template may write {{ bos_token }})."""
    return _compiled(template or FALLBACK_TEMPLATE).render(
        **(special_tokens or {}), messages=messages, add_generation_prompt=add_generation_prompt
    )


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """Compiling a template costs more than rendering it: once per template string."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)


def expand_images(text: str, slots: list[ImageSlot | VideoSlot], seq_len: int) -> str:
    """Replace the rendered `<image>` / `<video>` placeholders, in order, with their token blocks."""
    pieces = re.split(f"({IMAGE}|{VIDEO})", text)
    placeholders = pieces[1::2]
    if len(placeholders) != len(slots):
        raise InputError(
            f"the prompt has {len(placeholders)} image/video placeholders but {len(slots)} images or videos were given."
        )
    out = pieces[0]
    for slot, tag, rest in zip(slots, placeholders, pieces[2::2]):
        if (tag == VIDEO) != isinstance(slot, VideoSlot):
            raise InputError("the template put images and videos in a different order than the messages.")
        block = (
            video_block(slot, seq_len) if isinstance(slot, VideoSlot) else image_block(slot.rows, slot.cols, seq_len)
        )
        out += block + rest
    return out
