"""A slow model on a fast live stream: is there a backlog? (issue 4, "memory flat and latency bounded")

ffmpeg serves a 1280x720, 30 fps H.264 stream over HTTP on 127.0.0.1; `edgevlm watch` logic captions every frame
it gets to (motion gate off) with a full-size model for DURATION seconds. Printed: captions/s, frame age and
latency (first / median / max), frames read and dropped, and resident memory at the start, middle and end.

    python benchmarks/live_backlog.py BUNDLE [--duration 60] [--variant fp32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from videotools import HttpStream, free_port


def main() -> None:
    import edgevlm
    from edgevlm.media.sources import CaptureSource

    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--variant", default="fp32")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--rate", type=int, default=30)
    a = ap.parse_args()
    vlm = edgevlm.load(a.bundle, variant=a.variant)
    server = HttpStream(free_port(), size=a.size, rate=a.rate, seconds=int(a.duration) + 60).start()
    proc = psutil.Process()
    src = CaptureSource(server.url)
    rows = []
    t0 = time.monotonic()
    try:
        for c in vlm.watch(src, threshold=0, max_new_tokens=32):
            rows.append((time.monotonic() - t0, c.frame_age_ms, c.latency_ms, proc.memory_info().rss / 2**20))
            if rows[-1][0] > a.duration:
                break
        stats = src.stats
    finally:
        src.close()
        server.stop()
    elapsed = rows[-1][0]
    ages, lats, rss = [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
    print(
        f"stream {a.size} @ {a.rate} fps, {a.variant}, {elapsed:.0f} s: {len(rows)} captions "
        f"({len(rows) / elapsed:.2f}/s)"
    )
    print(f"frame age ms: first {ages[0]:.0f}, median {statistics.median(ages):.0f}, max {max(ages):.0f}")
    print(
        f"latency ms:   first {lats[0]:.0f}, median {statistics.median(lats):.0f}, max {max(lats):.0f}, "
        f"last {lats[-1]:.0f}"
    )
    print(f"frames read {stats.frames_read} ({stats.frames_read / elapsed:.1f}/s), dropped {stats.frames_dropped}")
    mid = rss[len(rss) // 2]
    print(f"RSS MB: after 1st caption {rss[0]:.0f}, middle {mid:.0f}, end {rss[-1]:.0f}, max {max(rss):.0f}")


if __name__ == "__main__":
    main()
