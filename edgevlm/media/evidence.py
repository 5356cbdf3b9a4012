"""An events folder: events.jsonl, each event's evidence frame and its lookback clip, each file written whole.

An alert is only worth what its proof is worth, and proof that may be half a file is none: every JPEG and MP4 is
written to a hidden temporary beside its final name and renamed into place once complete (a reader sees all of
it or nothing), and a stop (Ctrl-C, SIGTERM, an error) removes the temporary. events.jsonl is appended one line
per record, flushed and fsynced, so a crash loses at most the record being written. Clips are encoded on a
writer thread so that captions go on meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError
from ..records import Event
from .events import now_iso
from .lookback import PendingClip
from .outputs import _create_temporary, _describe
from .video import import_cv2

EVENTS_FILE = "events.jsonl"
MAX_QUEUED_CLIPS = 4  # clips waiting for the writer; more are dropped (with a warning), not held in memory
log = logging.getLogger("edgevlm")


class EventLog:
    """The events folder of a watch.

    Args:
        folder: where events.jsonl, <id>.jpg and <id>.mp4 go (made if missing; must be writable: checked now, so a
            bad folder fails before the model loads or any frame is read).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe, fd = _create_temporary(self.folder / "probe")
            os.close(fd)
            probe.unlink()
            _remove_stale_temporaries(self.folder)
            self._jsonl = open(self.folder / EVENTS_FILE, "a", encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as e:
            raise OutputError(
                f"the events folder {self.folder} cannot be written: {_describe(e)} (evidence=, --evidence DIR)."
            ) from None
        self._lock = threading.Lock()
        self._clips: queue.Queue[tuple[Event, PendingClip] | None] = queue.Queue()
        self._done: queue.Queue[Event] = queue.Queue()  # clip records, handed back to the watch's thread
        self._writer = threading.Thread(target=self._write_clips, name="edgevlm-clip-writer", daemon=True)
        self._writer.start()

    def record(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self._jsonl.write(line)
                self._jsonl.flush()
                os.fsync(self._jsonl.fileno())
            except OSError as e:
                raise OutputError(f"could not append to {self.folder / EVENTS_FILE}: {_describe(e)}.") from None

    def write_frame(self, event_id: str, rgb: np.ndarray) -> str | None:
        """The evidence JPEG; its file name, or None (and a logged warning) when it could not be written."""
        cv2 = import_cv2()
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        name = f"{event_id}.jpg"
        try:
            if not ok:
                raise OSError("JPEG encoding failed")
            _publish(self.folder / name, lambda path: path.write_bytes(jpeg.tobytes()))
        except OSError as e:
            self._warn(f"the evidence frame {self.folder / name} was not written: {_describe(e)}")
            return None
        return name

    def write_clip(self, event: Event, clip: PendingClip) -> None:
        """Queue a clip for the writer thread; its "clip" record comes back through finished(). A writer that
        cannot keep up (events faster than clips encode) drops clips rather than memory growing without bound."""
        if self._clips.qsize() >= MAX_QUEUED_CLIPS:
            self._warn(
                f"the clip {self.folder / (event.id + '.mp4')} was dropped: {MAX_QUEUED_CLIPS} clips are "
                f"already waiting to be written (shorter --lookback/--after, or fewer events)"
            )
            return
        self._clips.put((event, clip))

    def finished(self) -> list[Event]:
        """Clip records whose files are now in place (called from the watch's thread)."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def drain(self, wait: bool = True) -> None:
        """Stop the writer: with wait, after the queued clips are written; without, a clip being written is
        abandoned and its temporary removed. Their records are then in finished()."""
        if not wait:
            self._abandon = True
        self._clips.put(None)
        self._writer.join()

    def close(self) -> None:
        try:
            self._jsonl.close()
        except OSError:  # only a line whose append already failed (and raised) can be left in the buffer
            pass

    _abandon = False

    def _warn(self, message: str) -> None:
        """A proof that could not be written does not stop the watch (the record still goes out, without it)."""
        log.warning("warning: %s", message)

    def _write_clips(self) -> None:
        while (item := self._clips.get()) is not None:
            event, clip = item
            name = f"{event.id}.mp4"
            try:
                _publish(self.folder / name, functools.partial(self._encode, clip=clip), suffix=".mp4")
            except _Abandoned:
                continue
            except OSError as e:
                self._warn(f"the clip {self.folder / name} was not written: {_describe(e)}")
                continue
            first, last = clip.frames[0][0], clip.frames[-1][0]
            info: dict[str, Any] = {
                "file": name,
                "start": round(first, 3),
                "end": round(last, 3),
                "frames": len(clip.frames),
                "complete": clip.complete,
            }
            self._done.put(replace(event, phase="clip", clip=info, wall_time=now_iso()))

    def _encode(self, path: Path, clip: PendingClip) -> None:
        cv2 = import_cv2()
        frames = clip.frames
        span = frames[-1][0] - frames[0][0]
        fps = (len(frames) - 1) / span if len(frames) > 1 and span > 0 else 10.0
        first = cv2.imdecode(np.frombuffer(frames[0][1], np.uint8), cv2.IMREAD_COLOR)
        height, width = first.shape[:2]
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise _write_error(path, "OpenCV could not open an MP4 writer")
        try:
            for _, data in frames:
                if self._abandon:
                    raise _Abandoned("stopped while writing")
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                if image.shape[:2] != (height, width):  # the source changed size: the clip keeps its first one
                    image = cv2.resize(image, (width, height))
                writer.write(image)
        finally:
            writer.release()
        check = cv2.VideoCapture(str(path))  # VideoWriter reports no write errors (a full disk): read it back
        try:
            count = int(check.get(cv2.CAP_PROP_FRAME_COUNT)) if check.isOpened() else 0
        finally:
            check.release()
        if count != len(frames):  # VideoWriter reports no write errors
            raise _write_error(path, f"the written clip has {count} of {len(frames)} frames")


def _write_error(path: Path, what: str) -> OSError:
    """OpenCV's writer says nothing of why it failed; a disk with (almost) no room left is the usual reason."""
    try:
        full = shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        full = False
    return OSError(errno.ENOSPC, what) if full else OSError(errno.EIO, what)


STALE_S = 3600.0
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.partial(\.mp4)?$")


def _remove_stale_temporaries(folder: Path) -> None:
    """A process killed outright (SIGKILL, power loss) leaves its hidden temporary behind; the next watch on the
    folder removes ours that nobody has touched for an hour (a live writer touches its file every few seconds)."""
    now = time.time()
    for path in folder.iterdir():
        if _TEMPORARY.match(path.name):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > STALE_S:
                    path.unlink()


class _Abandoned(Exception):
    pass


def _publish(path: Path, write: Callable[[Path], Any], suffix: str = "") -> None:
    """Write through a hidden temporary and rename it to `path` once complete; on any failure, remove it."""
    tmp, fd = _create_temporary(path, suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
