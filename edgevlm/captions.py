"""Timed caption records and their file formats (text, SRT, WebVTT, JSONL), written so a file is never half there.

Output goes to a hidden temporary file beside the target and is renamed over it only when the run ends (finished,
or stopped by Ctrl-C / SIGTERM after the last complete cue), so a reader never sees a half-written file and a failed
run leaves none. Every format is valid after each cue, which is what makes finishing on interruption safe.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import InputError

FORMATS = ("text", "srt", "vtt", "jsonl")


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


def _clock(t: float, sep: str) -> str:
    ms = int(round(max(t, 0.0) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_time(t: float) -> str:
    return _clock(t, ",")


def vtt_time(t: float) -> str:
    return _clock(t, ".")


def _one_paragraph(text: str) -> str:
    """Cue text may not contain a blank line (it ends the cue) nor '-->' (it starts one)."""
    text = re.sub(r"\n\s*\n+", "\n", text.strip()).replace("-->", "->")
    return text or "…"


class CaptionWriter:
    """Writes Segment records (or any record with start/end/text) as text, SRT, WebVTT or JSONL.

    path=None writes to stdout as records arrive. With a path, call commit() to publish the file or discard() to
    leave nothing; as a context manager, normal exit and KeyboardInterrupt commit, any other error discards.
    """

    def __init__(self, fmt: str, path: str | os.PathLike | None = None, stream: IO[str] | None = None):
        if fmt not in FORMATS:
            raise InputError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}.")
        self.fmt, self.count = fmt, 0
        self.path = Path(path) if path is not None else None
        self._tmp: Path | None = None
        if self.path is not None:
            folder = self.path.parent
            if not folder.is_dir():
                raise InputError(f"cannot write {self.path}: folder {folder} does not exist.")
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=folder)
            self._tmp = Path(tmp)
            self._out: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        else:
            self._out = stream or sys.stdout
        if fmt == "vtt":
            self._emit("WEBVTT\n\n")

    def write(self, seg: Any) -> None:
        self.count += 1
        if self.fmt == "jsonl":
            record = seg.to_dict() if hasattr(seg, "to_dict") else dict(seg)
            line = json.dumps(record, ensure_ascii=False) + "\n"
        elif self.fmt == "srt":
            line = f"{self.count}\n{srt_time(seg.start)} --> {srt_time(seg.end)}\n{_one_paragraph(seg.text)}\n\n"
        elif self.fmt == "vtt":
            line = f"{vtt_time(seg.start)} --> {vtt_time(seg.end)}\n{_one_paragraph(seg.text)}\n\n"
        elif seg.end == seg.start:  # a live caption: a moment, not a span
            line = f"[{vtt_time(seg.start)}] {' '.join(seg.text.split())}\n"
        else:
            line = f"[{vtt_time(seg.start)} --> {vtt_time(seg.end)}] {' '.join(seg.text.split())}\n"
        self._emit(line)

    def _emit(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def commit(self) -> None:
        if self._tmp is None:
            return
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(self._tmp, self.path)
        self._tmp = None

    def discard(self) -> None:
        if self._tmp is None:
            return
        self._out.close()
        self._tmp.unlink(missing_ok=True)
        self._tmp = None

    def __enter__(self) -> CaptionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or issubclass(exc_type, KeyboardInterrupt):
            self.commit()
        else:
            self.discard()
