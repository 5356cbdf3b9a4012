"""The result records every layer hands out, in one place, each with `to_dict()` for JSON: `Result` (one answer,
from the engine), `Segment` (a span of a video, from a timeline) and `LiveCaption` (a moment of a live source).

A bottom layer like errors.py: plain dataclasses, importing nothing from edgevlm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """The record without the token ids (what `--json` prints)."""
        return {k: v for k, v in asdict(self).items() if k != "token_ids"}


@dataclass
class Segment:
    """A caption for a span of a video [start, end) in seconds, and what it cost."""

    start: float
    end: float
    text: str
    frame_time: float  # the time of the frame that was captioned
    merged: int = 0  # later sample points folded in because nothing changed
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
