"""The one table of task defaults: how many new tokens and which prompt each kind of call uses when not told.

Python's calls, the CLI and the server read these names rather than repeating literals, so "the default" means
one thing everywhere. A default applies only where neither a keyword nor a `config=` gives the option.
"""

from __future__ import annotations

CAPTION_PROMPT = "Describe this image."
"""`caption`, `caption_batch`, `stream` and `edgevlm caption IMAGE`."""

VIDEO_PROMPT = "Describe this video."
"""`caption_video` and `edgevlm caption VIDEO --mode clip`: one answer about a whole clip."""

FRAME_PROMPT = "Describe this image in one sentence."
"""One frame of a timeline or a live source: short, because frames come one after another."""

MAX_NEW_TOKENS = {
    "chat": 128,  # chat, ask, stream, ask_video, caption_video, edgevlm ask
    "caption": 64,  # caption, caption_batch, edgevlm caption IMAGE
    "timeline": 48,  # timeline segments, edgevlm caption VIDEO, archives
    "live": 32,  # watch, edgevlm watch
    "structured": 128,  # the CLI's structured answers (--choices, --json-schema, --regex): room for a JSON object
    "server": 256,  # the server's max_tokens when a request gives none: chat clients expect longer answers
}
"""max_new_tokens by task."""


def task_default(max_new_tokens: int | None, config: object | None, task: str) -> int | None:
    """The max_new_tokens a call of `task` runs with: the keyword if given, else the config's (None: let the
    config decide), else the task's default from the table."""
    if max_new_tokens is not None:
        return max_new_tokens
    return None if config is not None else MAX_NEW_TOKENS[task]
