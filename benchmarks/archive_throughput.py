"""Archive throughput, one run, same files: 1 process, --jobs 2, Ray with 1 actor and with 2 actors.

    python benchmarks/archive_throughput.py BUNDLE [--variant mixed] [--videos 12] [--seconds 30] [--every 5]

Makes N real H.264 videos of S seconds (a colour change every 5 s, so timelines have several segments), then runs
`edgevlm caption DIR -o OUT` each way into a fresh folder and reports files/hour and video-hours/hour of wall
time. The wall time includes loading the model(s) and, for Ray, starting a private cluster (`--ray local`): what
a user waits for.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from machine import cpu_line
from videotools import scenes

COLORS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "cyan", "magenta", "gray", "pink"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--every", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "videos"
        src.mkdir()
        for i in range(args.videos):
            colors = [COLORS[(i + k) % len(COLORS)] for k in range(max(1, args.seconds // 5))]
            scenes(src / f"{i:04d}.mp4", colors, seconds=5)
        video_seconds = args.videos * (args.seconds // 5) * 5
        print(
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_line()}; {args.videos} videos, "
            f"{video_seconds / 60:.1f} min of video, --every {args.every}"
        )
        print("| runner | wall s | files/hour | video-hours/hour | outputs |\n|---|---|---|---|---|")
        base = [
            sys.executable,
            "-m",
            "edgevlm.cli",
            "caption",
            str(src),
            "-m",
            args.bundle,
            "--every",
            str(args.every),
        ] + (["--variant", args.variant] if args.variant else [])
        for name, extra in [
            ("1 process (2 threads)", []),
            ("--jobs 2 (1 thread each)", ["--jobs", "2"]),
            ("Ray, 1 actor (2 threads)", ["--ray", "local", "--ray-actors", "1", "--threads", "2"]),
            ("Ray, 2 actors (1 thread each)", ["--ray", "local", "--ray-actors", "2"]),
        ]:
            out = Path(tmp) / re.sub(r"\W+", "_", name)
            t0 = time.monotonic()
            r = subprocess.run(base + ["-o", str(out)] + extra, capture_output=True, text=True)
            wall = time.monotonic() - t0
            if r.returncode != 0:
                print(f"| {name} | failed: {r.stderr.strip().splitlines()[-1]} |")
                continue
            n = len(list(out.rglob("*.srt")))
            print(f"| {name} | {wall:.1f} | {n / wall * 3600:.0f} | {video_seconds / wall:.1f} | {n} |", flush=True)


if __name__ == "__main__":
    main()
