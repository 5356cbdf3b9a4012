"""The result records every layer hands out, in one place, each with `to_dict()` for JSON: `Result` (one answer,
from the engine), `Segment` (a span of a video, from a timeline) and `LiveCaption` (a moment of a live source).

A bottom layer like errors.py: plain dataclasses, importing nothing from edgevlm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from enum import Enum
from typing import Any


def plain(value: Any) -> Any:
    """A structured answer's value as JSON-ready data: dataclass and pydantic instances become dicts, enums
    their values."""
    if isinstance(value, Enum):
        return plain(value.value)
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class Result:
    """One answer: the text plus what it cost."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    new_tokens: int
    finish_reason: str  # "stop" (end-of-utterance or a stop token) or "length"
    vision_ms: float
    prefill_ms: float
    first_token_ms: float
    decode_tokens_per_s: float
    total_ms: float
    images: int = 0
    tiles: int = 0
    cached_images: int = 0
    reused_tiles: int = 0  # tiles whose features came from the source's last frame (TileReuse), not the encoder
    value: Any = None  # a structured answer's parsed value (choices=, json_schema=, regex=); None otherwise

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """The record without the token ids (what `--json` prints)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("token_ids", "value")}
        d["value"] = plain(self.value)
        return d


@dataclass
class Segment:
    """A caption for a span of a video [start, end) in seconds, and what it cost."""

    start: float
    end: float
    text: str
    frame_time: float  # the time of the frame that was captioned
    merged: int = 0  # later sample points folded in because nothing changed
    timings: dict[str, float] = field(default_factory=dict)
    value: Any = None  # a structured answer's parsed value, as Result.value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "value": plain(self.value)}


@dataclass
class LiveCaption:
    """One caption of a live source. timestamp: the frame's time in the source (seconds; stream time for
    files, seconds since the source opened for cameras and network streams)."""

    timestamp: float
    text: str
    wall_time: float  # time.time() when the caption was ready
    frame_age_ms: float  # capture -> model start: how stale the frame was when captioning began
    latency_ms: float  # capture -> caption ready
    frames_read: int
    frames_dropped: int
    frames_static: int  # frames the motion gate skipped
    reconnects: int
    triggered: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    value: Any = None  # a structured answer's parsed value, as Result.value
    error: str | None = None  # a structured answer that could not complete (text is partial, value None)
    source: str | None = None  # which source, when a watch has several
    plan: dict[str, Any] | None = None  # with a latency budget: the detail, max_new_tokens and prediction in force

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "value": plain(self.value)}
