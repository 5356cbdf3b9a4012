"""Real video files and live streams for the tests, made with a real ffmpeg (imageio-ffmpeg's static build, or
the system's)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def ffmpeg() -> str:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        exe = shutil.which("ffmpeg")
        assert exe, "the video tests need ffmpeg: pip install imageio-ffmpeg (in the dev extra) or apt install ffmpeg"
        return exe


def run_ffmpeg(*args: str) -> None:
    out = subprocess.run(
        [ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr


def make(
    path: Path,
    source: str,
    seconds: float,
    codec: list[str],
    size: str = "320x240",
    rate: int = 10,
    extra_in: list[str] | None = None,
    filters: str | None = None,
) -> Path:
    """A video from one of ffmpeg's lavfi sources (testsrc, color=c=red ...)."""
    src = f"{source}{':' if '=' in source else '='}s={size}:r={rate}:d={seconds}"
    args = [*(extra_in or []), "-f", "lavfi", "-i", src]
    if filters:
        args += ["-vf", filters]
    run_ffmpeg(*args, *codec, str(path))
    return path


def scenes(
    path: Path,
    colors=("red", "blue", "green"),
    seconds: int = 4,
    size: str = "320x240",
    rate: int = 10,
    codec: tuple[str, ...] = ("-c:v", "libx264", "-pix_fmt", "yuv420p"),
) -> Path:
    """Static single-colour scenes one after another: hard cuts at multiples of `seconds`."""
    inputs, labels = [], ""
    for i, c in enumerate(colors):
        inputs += ["-f", "lavfi", "-i", f"color=c={c}:s={size}:r={rate}:d={seconds}"]
        labels += f"[{i}]"
    run_ffmpeg(*inputs, "-filter_complex", f"{labels}concat=n={len(colors)}:v=1", *codec, str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpStream:
    """ffmpeg serving a live MPEG-TS stream over HTTP on 127.0.0.1 (one client), paced in real time."""

    def __init__(
        self,
        port: int,
        size: str = "320x240",
        rate: int = 30,
        seconds: int = 120,
        source: str = "testsrc",
        inputs: list[str] | None = None,
        lossless: bool = False,
    ):
        """inputs: ffmpeg input and filter arguments instead of the lavfi `source`; lossless: x264 at qp 0, so
        what does not move decodes to the same pixels in every frame."""
        self.port, self.url = port, f"http://127.0.0.1:{port}/live.ts"
        self.args = [
            ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "quiet",
            "-re",
            *(inputs or ["-f", "lavfi", "-i", f"{source}=s={size}:r={rate}:d={seconds}"]),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            *(["-qp", "0"] if lossless else []),
            "-g",
            str(rate),
            "-f",
            "mpegts",
            "-listen",
            "1",
            self.url,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self) -> HttpStream:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it listens (it serves one client, so do not connect)
            out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
            if f"127.0.0.1:{self.port}" in out or not shutil.which("ss"):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def corner_stream(port: int, scene: Path, rate: int = 10, seconds: int = 120) -> HttpStream:
    """A fixed camera: the still `scene` (1024 x 768) with a 48-pixel box moving in its top-left corner, served
    losslessly over HTTP on 127.0.0.1 (the rest of each frame decodes to the same pixels every time)."""
    inputs = [
        "-loop",
        "1",
        "-framerate",
        str(rate),
        "-t",
        str(seconds),
        "-i",
        str(scene),
        "-f",
        "lavfi",
        "-i",
        f"color=c=red:s=48x48:r={rate}:d={seconds}",
        "-filter_complex",
        "[0][1]overlay=x='mod(n*7,120)':y=16,format=yuv444p",
    ]
    return HttpStream(port, rate=rate, inputs=inputs, lossless=True)
