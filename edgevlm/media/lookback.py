"""The last seconds of a live source, kept as JPEGs, so that an event's clip can start before the event.

A watch captions only the newest frame, so by the time a caption says "a person at the door" the frames that
show them arriving are gone. A FrameRing sits on the source's capture thread (LiveSource.add_tap) and keeps every
frame of the last `seconds`, at most CLIP_FPS per second, JPEG-compressed: raw 640x480 frames at 10 fps for 5 s are
46 MB, JPEGs about 2 MB. A clip that has started keeps taking frames until its end time, then goes to the writer.

Memory is capped per source: the ring and the clips still collecting frames count together (a JPEG both hold
counts once); at the cap the ring drops its oldest frames first, and a clip that would still pass it stops there
(its record says it is not complete).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .video import Frame, import_cv2

CLIP_FPS = 10.0  # frames per second kept for clips: enough to see what happened, a third of a camera's rate
JPEG_QUALITY = 85
DEFAULT_CAP_MB = 32.0  # per source: at 640x480, ~60 s of frames at CLIP_FPS


@dataclass
class PendingClip:
    """A clip collecting frames: from `begin` (source seconds) until `until`."""

    key: object  # what the clip belongs to (the event)
    begin: float
    until: float
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    complete: bool = True  # False when the memory cap or the source's end cut it short


class FrameRing:
    """Recent compressed frames of one source, and the clips being collected from it.

    Args:
        seconds: how far back a clip may start (the watch's lookback).
        on_ready: called with each clip that has all its frames (from the capture thread; keep it short).
        cap_mb: memory for the ring and its collecting clips together (a frame both hold counts once).
        fps: at most this many frames per second are kept.
    """

    def __init__(
        self,
        seconds: float,
        on_ready: Callable[[PendingClip], None],
        cap_mb: float = DEFAULT_CAP_MB,
        fps: float = CLIP_FPS,
    ):
        self.seconds, self.on_ready = seconds, on_ready
        self.cap = int(cap_mb * 1024 * 1024)
        self.min_gap = 0.75 / fps  # a 30 fps camera keeps every third frame, whatever its timestamps' jitter
        self._frames: deque[tuple[float, bytes]] = deque()
        self._clips: list[PendingClip] = []
        self._refs: dict[int, int] = {}  # id of a JPEG -> how many of the ring and the clips hold it
        self._held = 0  # bytes of the distinct JPEGs held
        self._lock = threading.Lock()
        self.peak_bytes = 0  # the most the ring and its clips held at once (for the memory test and benchmarks)
        # While a run of matching captions builds up to an event, the frames from `seconds` before its first one
        # are kept (the clip starts there), however long the hold takes; None otherwise. Set by the watch.
        self.pin: float | None = None

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._held

    def add(self, frame: Frame) -> None:
        """A frame the source just read (capture thread)."""
        t = frame.timestamp
        if self._frames and 0 <= t - self._frames[-1][0] < self.min_gap:
            return
        cv2 = import_cv2()
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            return
        data = jpeg.tobytes()
        ready = []
        with self._lock:
            self._frames.append((t, data))
            self._hold(data)
            while self._frames and t - self._frames[0][0] > self.seconds and not self._pinned(self._frames[0][0]):
                self._drop_oldest()
            for clip in self._clips:
                clip.frames.append((t, data))
                self._hold(data)
            while self._held > self.cap and len(self._frames) > 1:  # the ring gives way first, oldest first
                self._drop_oldest()
            while self._held > self.cap and self._clips:  # then the oldest clip stops where it is
                clip = self._clips.pop(0)
                clip.frames.pop()
                self._release(data)
                clip.complete = False
                ready.append(clip)
                self._release_clip(clip)
            for clip in [c for c in self._clips if t >= c.until]:
                self._clips.remove(clip)
                ready.append(clip)
                self._release_clip(clip)
            self.peak_bytes = max(self.peak_bytes, self._held)
        for clip in ready:
            if clip.frames:
                self.on_ready(clip)

    def start_clip(self, key: object, begin: float, until: float) -> None:
        """Collect a clip from `begin` (what the ring still has from then on) until `until`."""
        with self._lock:
            clip = PendingClip(key, begin, until)
            for t, data in self._frames:
                if t >= begin:
                    clip.frames.append((t, data))
                    self._hold(data)
            self._clips.append(clip)

    def flush(self) -> None:
        """The source ended: clips still collecting go out with what they have (not complete)."""
        with self._lock:
            clips, self._clips = self._clips, []
            for clip in clips:
                self._release_clip(clip)
        for clip in clips:
            clip.complete = False
            if clip.frames:
                self.on_ready(clip)

    def _pinned(self, t: float) -> bool:
        pin = self.pin
        return pin is not None and t >= pin - self.seconds

    def _hold(self, data: bytes) -> None:
        key = id(data)
        if key not in self._refs:
            self._refs[key] = 0
            self._held += len(data)
        self._refs[key] += 1

    def _release(self, data: bytes) -> None:
        key = id(data)
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self._held -= len(data)

    def _release_clip(self, clip: PendingClip) -> None:
        """A clip handed to the writer is the writer's memory now (one at a time), no longer the ring's."""
        for _, data in clip.frames:
            self._release(data)

    def _drop_oldest(self) -> None:
        _, data = self._frames.popleft()
        self._release(data)
