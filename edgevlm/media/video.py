"""Video files in, timestamped RGB frames out, through OpenCV's FFmpeg backend.

Why OpenCV and not PyAV: it is already a runtime dependency (one wheel with FFmpeg inside), it applies the
container's rotation metadata itself, and `CAP_PROP_POS_MSEC` after each `grab()` is the decoded frame's own
presentation time, so variable-frame-rate files get true timestamps. Frames that are not wanted are grabbed but
never converted to RGB, which is most of the saving a sampler needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.frame import Frame
from ..errors import InputError

VIDEO_EXTENSIONS = {
    ".mp4",
    ".m4v",
    ".mkv",
    ".avi",
    ".webm",
    ".mov",
    ".mpg",
    ".mpeg",
    ".ts",
    ".m2ts",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
}
SEEK_AHEAD_S = 8.0  # a target further ahead than this is reached by seeking instead of decoding every frame


def import_cv2():
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own messages too (AV_LOG_QUIET)
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # we report problems ourselves, in one line
    return cv2


@dataclass
class VideoInfo:
    """What the container says (duration = frame_count / fps, as transformers computes it)."""

    path: str
    width: int  # after rotation
    height: int
    fps: float
    frame_count: int
    duration: float
    codec: str
    rotation: int  # degrees the decoder turned the frames to display them upright


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _open(path: str | os.PathLike):
    cv2 = import_cv2()
    p = Path(path)
    if not p.exists():
        raise InputError(f"video file {p} does not exist; check the path.")
    if not p.is_file():
        raise InputError(f"{p} is not a regular file (a folder, device or pipe); pass a video file.")
    if p.stat().st_size == 0:
        raise InputError(f"video file {p} is empty (0 bytes); pass an mp4, mkv, avi, webm or mov file.")
    cap = cv2.VideoCapture(str(p), cv2.CAP_FFMPEG)
    if not cap.isOpened() and _is_media_container(p):
        raise InputError(
            f"{p} is a media file but has no video stream that decodes (audio only, truncated, or a "
            f"codec this FFmpeg build lacks); check that it plays as video."
        )
    if not cap.isOpened():
        raise InputError(
            f"{p} cannot be opened as a video (not a video, corrupt or truncated, or an unsupported "
            f"codec); check that the file plays, or re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)."
        )
    if cap.get(cv2.CAP_PROP_FRAME_WIDTH) <= 0 or cap.get(cv2.CAP_PROP_FRAME_HEIGHT) <= 0:
        cap.release()
        raise InputError(f"{p} has no video stream (audio only?); pass a file with video in it.")
    return cap


def _is_media_container(path: Path) -> bool:
    """Magic bytes of the common audio/video containers: tells 'no video in it' from 'not a media file'."""
    with open(path, "rb") as f:
        head = f.read(376)
    return (
        head[4:8] == b"ftyp"
        or head.startswith((b"\x1aE\xdf\xa3", b"OggS", b"fLaC", b"ID3", b"FLV"))
        or (head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"WAVE"))
        or (len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47)
        or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)
    )


def probe(path: str | os.PathLike) -> VideoInfo:
    """Container facts, and a check that at least one frame decodes."""
    cap = _open(path)
    try:
        info = _info(cap, path)
        if not cap.grab():
            raise InputError(
                f"{path} has a video stream but no frame in it decodes (corrupt or truncated); "
                f"check that the file plays."
            )
        return info
    finally:
        cap.release()


def _info(cap, path) -> VideoInfo:
    cv2 = import_cv2()
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    count = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace").strip("\x00 ")
    return VideoInfo(
        path=str(path),
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        fps=float(fps),
        frame_count=count,
        duration=count / fps if fps > 0 else 0.0,
        codec=fourcc,
        rotation=int(cap.get(cv2.CAP_PROP_ORIENTATION_META)),
    )


def read_frames(path: str | os.PathLike, every: float | None = None, start: float = 0.0) -> Iterator[Frame]:
    """Decode frames in order. every=None: all frames; every=s: the first frame at or after each multiple of s.

    Truncated files yield the frames that decode and stop; a file where nothing decodes raises InputError.
    """
    if every is not None and every <= 0:
        raise InputError(f"the sampling interval must be positive; got {every}.")
    return _read(path, start, every)


def _read(path, start: float, every: float | None) -> Iterator[Frame]:
    cv2 = import_cv2()
    cap = _open(path)
    try:
        if start > 0:
            cap.set(cv2.CAP_PROP_POS_MSEC, start * 1000.0)
        next_t, index, seen = start, -1, 0
        while cap.grab():
            index += 1
            t = max(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, 0.0)
            seen += 1
            if t + 1e-6 < next_t:
                continue
            ok, bgr = cap.retrieve()
            if not ok:
                continue
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t, index)
            if every is not None:
                while next_t <= t + 1e-6:
                    next_t += every
        if seen == 0:
            raise InputError(f"{path}: no frame decodes (corrupt or truncated video); check that the file plays.")
    finally:
        cap.release()


def clip_indices(info: VideoInfo, fps: float, max_frames: int, skip_secs: float = 1.0) -> np.ndarray:
    """SmolVLM's video sampling rule (transformers' SmolVLMVideoProcessor.sample_frames), in frame indices.

    `fps` frames per second up to `max_frames`, spread evenly; a long video loses `skip_secs` at both ends.
    """
    total = info.frame_count
    if total <= 0 or info.fps <= 0:
        raise InputError(
            f"{info.path}: the container gives no frame count or frame rate, so frames cannot be "
            f"sampled by time; re-mux it (ffmpeg -i IN -c copy OUT.mp4)."
        )
    desired = max(min(int(round(fps * info.duration)), max_frames), 1)
    start, end = 0, total - 1
    if skip_secs > 0 and (info.duration - 2 * skip_secs) > (max_frames * fps):
        start = int(skip_secs * info.fps)
        end = int(total - skip_secs * info.fps)
    start, end = max(0, start), min(end, total - 1)
    if start >= end:
        start, end = 0, total - 1
    return np.unique(np.linspace(start, end, desired, dtype=int))


def frames_at(path: str | os.PathLike, times: Iterable[float]) -> list[Frame]:
    """The first frame at or after each time (seconds, ascending), reading forward and seeking over long gaps.

    A time past the last frame gives the last frame, so a file whose header overstates its length (truncated)
    still yields one frame per requested time.
    """
    cv2 = import_cv2()
    targets = sorted(times)
    out: list[Frame] = []
    cap = _open(path)
    try:
        index, t, last, ended = -1, -1.0, None, False
        half = _half_frame(cap)
        for target in targets:
            if target - t > SEEK_AHEAD_S and t >= 0 and not ended:
                cap.set(cv2.CAP_PROP_POS_MSEC, max(target - 1.0, 0) * 1000.0)
                index = int(round(cap.get(cv2.CAP_PROP_POS_FRAMES))) - 1
            while not ended and t + 1e-6 < target - half:
                if not cap.grab():
                    ended = True
                    break
                index += 1
                t = max(cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0, 0.0)
                last = None
            if last is None:
                ok, bgr = cap.retrieve() if not ended else _reread(path, t)
                if not ok:
                    break
                last = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), t, index)
            out.append(last)
        if not out:
            raise InputError(f"{path}: no frame decodes (corrupt or truncated video); check that the file plays.")
        while len(out) < len(targets):
            out.append(out[-1])
        return out
    finally:
        cap.release()


def _reread(path, t: float):
    """The frame at time t, read again: at the end of a file the last grabbed frame is gone once grab() fails."""
    cv2 = import_cv2()
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        cap.set(cv2.CAP_PROP_POS_MSEC, t * 1000.0)
        return cap.read()
    finally:
        cap.release()


def _half_frame(cap) -> float:
    fps = cap.get(import_cv2().CAP_PROP_FPS) or 0.0
    return 0.5 / fps if fps > 0 else 0.0


def sample_clip(
    path: str | os.PathLike, fps: float, max_frames: int, skip_secs: float = 1.0
) -> tuple[list[Frame], VideoInfo]:
    """Frames for SmolVLM's whole-clip video prompt: the processor's rule, timestamps from the stream."""
    info = probe(path)
    idx = clip_indices(info, fps, max_frames, skip_secs)
    frames = frames_at(path, [i / info.fps for i in idx])
    return _dedupe(frames), info


def _dedupe(frames: list[Frame]) -> list[Frame]:
    out: list[Frame] = []
    for f in frames:
        if not out or f.index != out[-1].index:
            out.append(f)
    return out
