"""Live frame sources: cameras, network streams, files replayed in real time, and frames a caller pushes in.

Every source hands over only the newest frame. A capture thread reads as fast as the source delivers and
overwrites a one-frame slot, so a model slower than the stream never builds a backlog: memory stays flat, the
frame being captioned is at most one read old, and the frames nobody looked at are counted as dropped.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SourceError
from .video import Frame, import_cv2

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://", "rtp://")


@dataclass
class SourceStats:
    frames_read: int = 0  # frames that arrived from the source
    frames_delivered: int = 0  # frames a consumer took
    frames_dropped: int = 0  # frames overwritten before anyone took them
    reconnects: int = 0
    disconnected_s: float = 0.0


class LatestFrame:
    """A one-frame mailbox: put() replaces what is there, take() waits for a frame not taken before."""

    def __init__(self, stats: SourceStats):
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.stats = stats
        self.taps: list[Callable[[Frame], None]] = []

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.stats.frames_dropped += 1
            self._frame = frame
            self.stats.frames_read += 1
            self._cond.notify_all()
        for tap in self.taps:  # outside the lock: a consumer never waits for a tap
            tap(frame)

    def take(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self.stats.frames_delivered += 1
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class LiveSource:
    """Base of all sources: `get(timeout)` returns the newest untaken Frame, or None when nothing new came in
    time; `finished` is True once the source has ended (then `error` says why, if it failed)."""

    name = "source"

    def __init__(self) -> None:
        self.stats = SourceStats()
        self._slot = LatestFrame(self.stats)
        self.error: SourceError | None = None
        self._t0 = time.monotonic()

    def get(self, timeout: float | None = 0.5) -> Frame | None:
        return self._slot.take(timeout)

    @property
    def finished(self) -> bool:
        return self._slot.closed

    def close(self) -> None:
        self._slot.close()

    def add_tap(self, tap: Callable[[Frame], None]) -> None:
        """Also hand every frame read to `tap`, on the reading thread (a watch's lookback ring: frames the
        newest-frame slot drops still reach it). Keep it short: the source reads no faster than its taps."""
        self._slot.taps.append(tap)

    def remove_tap(self, tap: Callable[[Frame], None]) -> None:
        if tap in self._slot.taps:
            self._slot.taps.remove(tap)

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class PushSource(LiveSource):
    """Frames from the caller's own pipeline (GStreamer, a camera SDK, a callback): push() never blocks and
    keeps only the newest frame. Timestamps are the caller's (seconds); by default, seconds since creation."""

    name = "push"

    def __init__(self, name: str | None = None) -> None:
        super().__init__()
        self._index = 0
        if name is not None:
            self.name = name  # what a watch of several sources calls this one

    def push(self, image: np.ndarray, timestamp: float | None = None, color: str = "rgb") -> None:
        if self.finished:
            raise SourceError("push() after close(); create a new PushSource.")
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] not in (3, 4)
        ):
            raise InputError("push() takes uint8 frames of shape (H, W, 3) or (H, W, 4).")
        if color not in ("rgb", "bgr"):
            raise InputError(f"color must be 'rgb' or 'bgr'; got {color!r}.")
        cv2 = import_cv2()
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if color == "bgr" else cv2.COLOR_RGBA2RGB)
        elif color == "bgr":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        else:
            image = image.copy()  # the caller may reuse its buffer
        now = time.monotonic()
        self._slot.put(Frame(image, now - self._t0 if timestamp is None else float(timestamp), self._index, now))
        self._index += 1


class CaptureSource(LiveSource):
    """A camera (index or /dev/videoN), a network stream (RTSP, HTTP, UDP, TCP, RTMP, SRT URL) or a video file
    replayed at its own speed, read by a background thread.

    A network stream that drops is reopened with exponential backoff (0.5 s doubling to 8 s) for up to
    `retry_for` seconds; a source that cannot be opened at all raises SourceError at once.
    """

    def __init__(
        self,
        target: str | int,
        retry_for: float = 30.0,
        open_timeout: float = 5.0,
        read_timeout: float = 5.0,
        realtime: bool = True,
        loop: bool = False,
    ):
        super().__init__()
        self.kind, self.target = _classify(target)
        self.name = str(target)
        self.retry_for, self.realtime, self.loop = retry_for, realtime, loop
        self._timeouts = [
            import_cv2().CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(open_timeout * 1000),
            import_cv2().CAP_PROP_READ_TIMEOUT_MSEC,
            int(read_timeout * 1000),
        ]
        self._stop = threading.Event()
        self._cap = self._open_or_raise()
        self._thread = threading.Thread(target=self._run, name=f"edgevlm-capture-{self.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ opening
    def _open(self):
        cv2 = import_cv2()
        if self.kind == "camera":
            cap = cv2.VideoCapture(self.target)
        else:
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, self._timeouts)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _open_or_raise(self):
        cap = self._open()
        if cap is not None:
            return cap
        if self.kind == "camera":
            raise SourceError(
                f"camera {self.name} could not be opened (no such device, no permission, or in use "
                f"by another program); check the index or /dev/videoN path (v4l2-ctl --list-devices)."
            )
        if self.kind == "network":
            raise SourceError(
                f"could not open the stream {self.name} (nothing answered, or it is not a video "
                f"stream); check the address and that the stream is running."
            )
        raise SourceError(f"{self.name} cannot be opened as a video; check that the file plays.")

    # ---------------------------------------------------------------------------------------- capturing
    def _run(self) -> None:
        cv2 = import_cv2()
        cap, index, start_wall, first_pts = self._cap, 0, time.monotonic(), None
        try:
            while not self._stop.is_set():
                ok, bgr = cap.read()
                now = time.monotonic()
                if not ok:
                    cap.release()
                    if self.kind == "file" and self.loop:
                        cap, start_wall, first_pts = self._open(), time.monotonic(), None
                        if cap is not None:
                            continue
                    if self.kind == "file":
                        return
                    cap = self._reconnect()
                    if cap is None:
                        return
                    continue
                if self.kind == "file":
                    pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    first_pts = pts if first_pts is None else first_pts
                    if self.realtime:
                        delay = start_wall + (pts - first_pts) - now
                        if delay > 0 and self._stop.wait(delay):
                            return
                        now = time.monotonic()
                    timestamp = pts
                else:
                    timestamp = now - self._t0
                self._slot.put(Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), timestamp, index, now))
                index += 1
        finally:
            if cap is not None:
                cap.release()
            self._slot.close()

    def _reconnect(self):
        lost_at, delay = time.monotonic(), 0.5
        while not self._stop.is_set():
            if time.monotonic() - lost_at > self.retry_for:
                self.error = SourceError(
                    f"the stream {self.name} was lost and did not come back within "
                    f"{self.retry_for:g} s; check the source (or raise retry_for, CLI --retry-for)."
                )
                return None
            if self._stop.wait(delay):
                return None
            cap = self._open()
            if cap is not None:
                self.stats.reconnects += 1
                self.stats.disconnected_s += time.monotonic() - lost_at
                return cap
            delay = min(delay * 2, 8.0)
        return None

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        super().close()


def _classify(target: str | int) -> tuple[str, Any]:
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return "camera", int(target)
    if not isinstance(target, (str, os.PathLike)):
        raise InputError(f"a source is a camera index, /dev/videoN, a stream URL or a video file; got {target!r}.")
    s = str(target)
    if s.startswith("/dev/video"):
        if not Path(s).exists():
            raise SourceError(f"camera {s} does not exist; check the device path (v4l2-ctl --list-devices).")
        return "camera", s
    if s.lower().startswith(NETWORK_SCHEMES):
        return "network", s
    if "://" in s:
        raise InputError(f"unsupported stream address {s}; use rtsp://, http(s)://, udp://, tcp://, rtmp:// or srt://.")
    p = Path(s)
    if not p.is_file():
        raise InputError(f"{s} is not a camera index, /dev/videoN device, stream URL or existing video file.")
    if p.stat().st_size == 0:
        raise InputError(f"video file {p} is empty (0 bytes).")
    return "file", s


def open_source(target: str | int | LiveSource, **kw: Any) -> LiveSource:
    """A LiveSource for a camera index, /dev/videoN, stream URL or file path (passed through if already one)."""
    if isinstance(target, LiveSource):
        return target
    return CaptureSource(target, **kw)
