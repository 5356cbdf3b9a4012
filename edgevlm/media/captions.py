"""Timed caption records and their file formats (text, SRT, WebVTT, JSONL), written so a file is never half there.

Where the bytes go (atomic file, appended log, stream) is edgevlm.media.outputs' concern. Every format is valid after each
cue, which is what makes finishing on interruption safe.
"""

from __future__ import annotations

import json
import os
import re
from typing import IO, Any

from ..errors import InputError
from ..records import LiveCaption
from .outputs import OutputTarget

FORMATS = ("text", "srt", "vtt", "jsonl")


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


# Unicode line breaks that json.dumps leaves raw: readers that split lines by Unicode rules (str.splitlines,
# many editors) would cut a record in two.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_line(record: dict[str, Any]) -> str:
    line = json.dumps(record, ensure_ascii=False)
    for raw, escaped in _LINE_BREAKS.items():
        line = line.replace(raw, escaped)
    return line + "\n"


class CaptionWriter:
    """Writes Segment records (or any record with start/end/text) as text, SRT, WebVTT or JSONL.

    `output` is None (stdout), a path, or a checked OutputTarget (edgevlm.media.outputs). mode="atomic" publishes the
    file only at commit() (discard() leaves nothing); mode="append" (live logs) adds one complete line per record
    as it comes. As a context manager, normal exit and KeyboardInterrupt after a record commit; anything else discards.
    """

    def __init__(
        self,
        fmt: str,
        output: str | os.PathLike | OutputTarget | None = None,
        stream: IO[str] | None = None,
        mode: str = "atomic",
    ):
        if fmt not in FORMATS:
            raise InputError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}.")
        if mode == "append" and fmt not in ("text", "jsonl"):
            raise InputError(f"{fmt} files cannot be appended to record by record; use text or jsonl.")
        self.fmt, self.count = fmt, 0
        target = output if isinstance(output, OutputTarget) else OutputTarget(output)
        self.path = target.path
        self._stream = stream if stream is not None and target.path is None else None
        self._out = None if self._stream is not None else target.open(mode)
        if fmt == "vtt":
            self._emit("WEBVTT\n\n")

    def write(self, seg: Any) -> None:
        self.count += 1
        if self.fmt == "jsonl":
            record = seg.to_dict() if hasattr(seg, "to_dict") else dict(seg)
            line = _json_line(record)
        elif self.fmt == "srt":
            line = f"{self.count}\n{srt_time(seg.start)} --> {srt_time(seg.end)}\n{_one_paragraph(seg.text)}\n\n"
        elif self.fmt == "vtt":
            line = f"{vtt_time(seg.start)} --> {vtt_time(seg.end)}\n{_one_paragraph(seg.text)}\n\n"
        elif isinstance(seg, LiveCaption):  # a moment, not a span
            where = f" {seg.source}:" if seg.source else ""
            line = f"[{vtt_time(seg.timestamp)}]{where} {' '.join(seg.text.split())}\n"
        else:
            line = f"[{vtt_time(seg.start)} --> {vtt_time(seg.end)}] {' '.join(seg.text.split())}\n"
        self._emit(line)

    def _emit(self, text: str) -> None:
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()
        elif self._out is not None:
            self._out.write(text)

    def commit(self) -> None:
        if self._out is not None:
            self._out.commit()

    def discard(self) -> None:
        if self._out is not None:
            self._out.discard()

    def __enter__(self) -> CaptionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Interrupted before the first record: keep whatever the target held before.
        if exc_type is None or (issubclass(exc_type, KeyboardInterrupt) and self.count):
            self.commit()
        else:
            self.discard()
