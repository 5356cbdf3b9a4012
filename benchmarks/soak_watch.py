"""Soak: `edgevlm watch` on a looping local stream for a long time. Does memory or latency grow? (issue 9)

A 12 s clip (moving test pattern, so every frame passes the motion gate) is looped forever by ffmpeg and sent as
MPEG-TS over UDP to 127.0.0.1; the real CLI (`edgevlm watch udp://... --threshold 0 --format jsonl -o FILE`)
captions it with the given bundle for DURATION seconds, then gets SIGTERM. The CLI process's RSS is sampled every
few seconds with psutil; latency per caption comes from the JSONL file the CLI wrote. Printed: captions, RSS and
latency in the first window after warm-up against the last window (growth in %); a PNG plot of both over time.

    python benchmarks/soak_watch.py BUNDLE [--duration 1800] [--plot docs/soak_watch.png] [--out soak.json]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from machine import cpu_line
from videotools import ffmpeg, free_port, make


def window(rows: list[tuple[float, float]], lo: float, hi: float) -> float:
    vals = [v for t, v in rows if lo <= t < hi]
    return statistics.median(vals) if vals else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--warmup", type=float, default=120, help="seconds before the first window starts")
    ap.add_argument("--window", type=float, default=300, help="length of the first and last windows")
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgevlm-soak-"))
    clip = make(work / "loop.mp4", "testsrc", 12, ["-c:v", "libx264", "-pix_fmt", "yuv420p"], size="640x360", rate=15)
    port = free_port()
    sender = subprocess.Popen(
        [
            ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "quiet",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
            str(clip),
            "-c",
            "copy",
            "-f",
            "mpegts",
            f"udp://127.0.0.1:{port}?pkt_size=1316",
        ],
        stdin=subprocess.DEVNULL,
    )
    jsonl = work / "captions.jsonl"
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgevlm.cli",
            "watch",
            f"udp://127.0.0.1:{port}",
            "-m",
            a.bundle,
            "--variant",
            a.variant,
            "--threshold",
            "0",
            "--max-new-tokens",
            "16",
            "--format",
            "jsonl",
            "-o",
            str(jsonl),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall0 = time.time()
    proc = psutil.Process(cli.pid)
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < a.duration and cli.poll() is None:
            rss.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
            time.sleep(5)
    finally:
        cli.send_signal(signal.SIGTERM)
        err = cli.communicate(timeout=60)[1]
        sender.kill()
        sender.wait()
    lat: list[tuple[float, float]] = []
    for line in jsonl.read_text().splitlines():
        rec = json.loads(line)
        lat.append((rec["wall_time"] - wall0, rec["latency_ms"]))
    end = rss[-1][0]
    first = (a.warmup, a.warmup + a.window)
    last = (end - a.window, end + 1)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_line(),
        "bundle": a.bundle,
        "variant": a.variant,
        "duration_s": round(end),
        "captions": len(lat),
        "exit_code": cli.returncode,
        "stderr_tail": err.strip().splitlines()[-2:],
        "rss_mb_first": round(window(rss, *first), 1),
        "rss_mb_last": round(window(rss, *last), 1),
        "rss_mb_max": round(max(v for _, v in rss), 1),
        "latency_ms_first": round(window(lat, *first), 1),
        "latency_ms_last": round(window(lat, *last), 1),
    }
    result["rss_growth_pct"] = round(100 * (result["rss_mb_last"] / result["rss_mb_first"] - 1), 2)
    result["latency_growth_pct"] = round(100 * (result["latency_ms_last"] / result["latency_ms_first"] - 1), 2)
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps({**result, "rss": rss, "latency": lat}))
    if a.plot:
        plot(rss, lat, result, a.plot)


def plot(rss, lat, result, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot([t / 60 for t, _ in rss], [v for _, v in rss], lw=1)
    ax1.set_ylabel("RSS of edgevlm watch (MB)")
    ax1.set_title(
        f"edgevlm watch soak: {result['captions']} captions in {result['duration_s'] / 60:.0f} min, "
        f"RSS {result['rss_growth_pct']:+.1f} %, latency {result['latency_growth_pct']:+.1f} %",
        fontsize=10,
    )
    ax2.plot([t / 60 for t, _ in lat], [v for _, v in lat], ".", ms=1.5)
    ax2.set_ylabel("caption latency (ms)")
    ax2.set_xlabel(f"minutes  ({result['date']}; {result['cpu']})")
    ax2.xaxis.label.set_size(8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
