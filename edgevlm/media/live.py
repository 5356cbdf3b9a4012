"""Captions of a live source as they happen: newest frame only, unchanged scenes skipped, optional trigger.

The loop takes the newest frame from the source (older ones were dropped by the source's one-frame slot), lets
the motion gate throw away frames that show nothing new, captions the rest and yields LiveCaption records with
their timing, so a caller sees how stale each caption is and how many frames went by uncaptioned.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import IncompleteAnswerError, InputError
from ..records import LiveCaption
from .conditions import Condition
from .motion import MotionGate
from .sources import LiveSource, open_source

if TYPE_CHECKING:
    from ..engine.core import Engine

DEFAULT_LIVE_PROMPT = "Describe this image in one sentence."


@dataclass
class Trigger:
    """Fire when a caption matches: call `callback` with the caption; `stop=True` ends the watch after the first
    match. Match either the caption text against `pattern` (a case-insensitive regular expression) or, for a
    structured watch (choices= / json_schema= / regex=), the answer's value against `when`, a condition such as
    "person == true and count >= 2" (see edgevlm.media.conditions)."""

    pattern: str | None = None
    callback: Callable[[LiveCaption], None] | None = None
    stop: bool = False
    when: str | None = None

    def __post_init__(self) -> None:
        if (self.pattern is None) == (self.when is None):
            raise InputError("a Trigger needs a pattern (matched against the caption text) or when= (a condition "
                             "on a structured answer), one of the two.")
        self._regex = re.compile(self.pattern, re.IGNORECASE) if self.pattern is not None else None
        self._condition = Condition(self.when) if self.when is not None else None

    def matches(self, caption: LiveCaption) -> bool:
        if self._regex is not None:
            return self._regex.search(caption.text) is not None
        return self._condition(caption.value)


def watch(vlm: Engine, source: str | int | LiveSource, prompt: str = DEFAULT_LIVE_PROMPT, max_new_tokens: int = 32,
          threshold: float = 6.0, min_interval: float = 0.0, heartbeat: float | None = None, split: bool = False,
          trigger: Trigger | None = None, max_captions: int | None = None, source_options: dict | None = None,
          **generate_kw: Any) -> Iterator[LiveCaption]:
    """Yield a LiveCaption for each frame worth describing until the source ends (or max_captions).

    threshold: motion-gate level (mean grey-level difference, 0-255) under which a frame is 'nothing new'
    (0 captions every frame it gets to). min_interval: at least this many seconds between caption starts.
    heartbeat: caption an unchanged scene anyway after this many seconds. source: a camera index, /dev/videoN,
    stream URL, video file (replayed in real time) or a LiveSource such as PushSource; a source opened here is
    closed when the generator ends, whatever ends it. A failed source raises its SourceError after the
    captions it gave. With a constraint (choices=, json_schema=, regex=), a frame whose answer cannot finish
    within max_new_tokens gives a caption with `error` set and no value (it never triggers); the watch goes on.
    """
    own = not isinstance(source, LiveSource)
    src = open_source(source, **(source_options or {}))
    gate, static, count, last_start = MotionGate(threshold), 0, 0, None
    try:
        while max_captions is None or count < max_captions:
            frame = src.get(timeout=0.25)
            if frame is None:
                if src.finished:
                    break
                continue
            now = time.monotonic()
            if last_start is not None and now - last_start < min_interval:
                continue
            due = heartbeat is not None and last_start is not None and now - last_start >= heartbeat
            if not gate.changed(frame.image) and not due:
                static += 1
                continue
            last_start = time.monotonic()
            try:
                r, error = vlm.caption(frame.image, max_new_tokens=max_new_tokens, prompt=prompt, split=split,
                                       cache=False, **generate_kw), None
            except IncompleteAnswerError as e:  # one frame's structured answer did not fit: say so, go on
                r, error = e.result, str(e)
            done = time.monotonic()
            s = src.stats
            caption = LiveCaption(
                timestamp=round(frame.timestamp, 3), text=r.text, value=r.value, wall_time=time.time(),
                frame_age_ms=round((last_start - frame.captured) * 1e3, 1),
                latency_ms=round((done - frame.captured) * 1e3, 1), frames_read=s.frames_read,
                frames_dropped=s.frames_dropped, frames_static=static, reconnects=s.reconnects,
                timings={"vision_ms": round(r.vision_ms, 1), "prefill_ms": round(r.prefill_ms, 1),
                         "total_ms": round(r.total_ms, 1), "new_tokens": r.new_tokens}, error=error)
            count += 1
            if trigger is not None and error is None and trigger.matches(caption):
                caption.triggered = True
                if trigger.callback is not None:
                    trigger.callback(caption)
            yield caption
            if caption.triggered and trigger.stop:
                break
        if src.error is not None:
            raise src.error
    finally:
        if own:
            src.close()
