"""A video file -> timed captions: a segment every N seconds or at each scene change, near-duplicates merged.

Frames are examined at `sample_fps` (cheap: decode plus a thumbnail); only segment starts that differ from the
last captioned frame reach the model, so a static shot costs one caption however long it lasts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import defaults
from ..errors import InputError
from ..records import Segment
from .budget import Pace
from .motion import MotionGate, difference, thumbnail
from .video import Frame, probe, read_frames

if TYPE_CHECKING:
    from ..engine.core import Engine

DEFAULT_TIMELINE_PROMPT = defaults.FRAME_PROMPT


def timeline(
    vlm: Engine,
    video: str | os.PathLike,
    *,
    every: float = 5.0,
    scene: bool = True,
    sample_fps: float = 2.0,
    threshold: float = 6.0,
    scene_threshold: float = 30.0,
    prompt: str = DEFAULT_TIMELINE_PROMPT,
    max_new_tokens: int | None = None,
    split: bool = False,
    on_progress: Callable[[float, float], None] | None = None,
    budget_per_minute: float | None = None,
    **generate_kw: Any,
) -> Iterator[Segment]:
    """Yield Segments in time order; each covers [start, end) and the segments tile the whole video.

    Args:
        vlm: the loaded model (`VLM.timeline` passes itself).
        video: a video file.
        every: longest stretch (seconds) before a new sample point is considered.
        scene: also start a segment where consecutive sampled frames differ by `scene_threshold` grey levels or
            more (a cut).
        sample_fps: frames examined per second.
        threshold: a sample point whose frame differs from the last captioned frame by less than this (mean grey
            levels) is merged into the current segment instead of being captioned.
        scene_threshold: the difference that counts as a cut.
        prompt: the instruction per captioned frame (default edgevlm.defaults.FRAME_PROMPT).
        max_new_tokens: per caption (default 32).
        split: False captions each frame as one tile (fast); True uses the image grid.
        on_progress: on_progress(seconds_done, duration) is called as frames are examined.
        budget_per_minute: seconds of captioning per minute of video: sample points are spaced (never closer than
            `every`) and answers shortened (48 -> 32 -> 24 tokens, not for structured answers) so that the whole
            file takes about that; each segment's timings say the spacing and length in force (`every_s`,
            `max_new_tokens`).
        **generate_kw: generation options, as `Engine.ask`.

    Example:
        import edgevlm

        vlm = edgevlm.load("./smolvlm2-256m-bundle")
        for seg in vlm.timeline("clip.mp4", every=2.0, scene=True):
            print(seg.start, seg.end, seg.text, seg.merged)
    """
    if every <= 0 or sample_fps <= 0:
        raise InputError("every (CLI: --every) and sample_fps must be positive numbers of seconds / frames per second.")
    info = probe(video)
    tokens = defaults.task_default(max_new_tokens, generate_kw.get("config"), "timeline")
    pace = None
    if budget_per_minute is not None:
        constrained = any(
            generate_kw.get(k) is not None for k in ("choices", "json_schema", "regex", "grammar", "constraint")
        )
        pace = Pace(budget_per_minute, every, tokens or defaults.MAX_NEW_TOKENS["timeline"], constrained)
        pace.start(time.monotonic())
    gate = MotionGate(threshold)
    current: Segment | None = None
    last_boundary = 0.0  # read only once a segment is open
    prev_thumb = None
    last: Frame | None = None
    for frame in read_frames(video, every=1.0 / sample_fps):
        last = frame
        thumb = thumbnail(frame.image)
        cut = scene and prev_thumb is not None and difference(thumb, prev_thumb) >= scene_threshold
        prev_thumb = thumb
        spacing = pace.every if pace is not None else every
        if current is not None and not cut and frame.timestamp - last_boundary < spacing - 1e-6:
            continue
        last_boundary = frame.timestamp
        if current is not None and not gate.changed(frame.image, thumb):
            current.merged += 1
            continue
        starts_video = current is None
        if current is None:
            gate.changed(frame.image, thumb)
        else:
            current.end = frame.timestamp
            yield current
        current = _caption(vlm, frame, prompt, pace.max_new_tokens if pace is not None else tokens, split, generate_kw)
        if pace is not None:
            current.timings.update(every_s=round(pace.every, 2), max_new_tokens=pace.max_new_tokens)
            pace.observe(frame.timestamp, time.monotonic())
        if starts_video:
            current.start = 0.0  # the segments tile the video from its first instant
        if on_progress:
            on_progress(frame.timestamp, info.duration)
    if current is not None and last is not None:
        frame_span = 1.0 / info.fps if info.fps > 0 else 1.0 / sample_fps
        current.end = max(info.duration, last.timestamp + frame_span, current.start + 1e-3)
        if on_progress:
            on_progress(info.duration, info.duration)
        yield current


def _caption(vlm: Engine, frame: Frame, prompt: str, max_new_tokens: int | None, split: bool, kw: dict) -> Segment:
    r = vlm.caption(frame.image, max_new_tokens=max_new_tokens, prompt=prompt, split=split, cache=False, **kw)
    timings = {
        "vision_ms": round(r.vision_ms, 1),
        "prefill_ms": round(r.prefill_ms, 1),
        "total_ms": round(r.total_ms, 1),
        "new_tokens": r.new_tokens,
        "decode_tokens_per_s": round(r.decode_tokens_per_s, 1),
    }
    return Segment(
        start=frame.timestamp,
        end=frame.timestamp,
        text=r.text,
        frame_time=frame.timestamp,
        timings=timings,
        value=r.value,
    )
