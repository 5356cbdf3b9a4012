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
    event: Event | None = None  # the trigger's event that started or ended with this caption

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "value": plain(self.value), "event": self.event.to_dict() if self.event else None}


EVENT_SCHEMA_ID = "https://edgevlm.dev/schemas/event-1.json"


@dataclass
class Event:
    """One record of a trigger's event; edgevlm/media/event.schema.json is its published JSON Schema. An event
    goes through phases, each one record with the same id: "start" once the condition has held long enough (the
    alert), "clip" when its lookback clip is written, "end" once the condition has been false for the cooldown
    (or the source ended). Times are the source's (seconds, as LiveCaption.timestamp)."""

    id: str
    phase: str  # "start" | "clip" | "end"
    source: str
    start: float  # the first caption of the run of matches that fired it
    fired: float  # the caption that fired it (hold reached)
    end: float | None  # the last matching caption ("end" only)
    wall_time: str  # ISO 8601, UTC, when this record was made
    text: str  # the answer that fired it
    value: Any  # its structured value, if any
    trigger: dict[str, Any]  # what fired it: pattern or when, hold, hold_s, cooldown
    model: dict[str, Any]  # which model said it: bundle, variant, file digests, prompt, constraint
    evidence: str | None = None  # the JPEG of the frame that fired it, a file name in the events folder
    clip: dict[str, Any] | None = None  # "clip": {"file", "start", "end", "frames", "complete"}
    reason: str | None = None  # "end": "cooldown" or "source ended"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": EVENT_SCHEMA_ID, **asdict(self), "value": plain(self.value)}
