"""Lookback rings under load: several live streams watched at once with events, evidence and clips, for minutes;
the memory each source's ring and its collecting clips hold (never above the cap), the process's RSS, and how
many events and clips were written.

    python benchmarks/lookback_soak.py BUNDLE [--variant mixed] [--sources 4] [--seconds 600] [--lookback 120]
        [--after 5] [--size 960x540] [--out DIR]

Each stream is ffmpeg's testsrc2 (moving content) served over HTTP on 127.0.0.1 in real time. The trigger matches
captions whose text starts with a-m (about half of the tiny or real model's captions), so events start and end
all the time and each writes a frame and a clip. A lookback of 120 s at 960x540 (about 27 kB per frame) needs more than the 32 MB cap, so
the cap is what bounds the rings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from machine import cpu_line
from videotools import HttpStream, free_port

import edgevlm
from edgevlm.media.lookback import DEFAULT_CAP_MB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--variant", default="mixed")
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--lookback", type=float, default=120)
    ap.add_argument("--after", type=float, default=5)
    ap.add_argument("--size", default="960x540")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="lookback-soak-"))
    vlm = edgevlm.load(a.bundle, variant=a.variant)
    streams = [
        HttpStream(free_port(), size=a.size, rate=15, seconds=int(a.seconds) + 120, source="testsrc2").start()
        for _ in range(a.sources)
    ]
    records: list[edgevlm.Event] = []
    trigger = edgevlm.Trigger("^[a-m]", hold=1, cooldown=2, on_event=records.append)
    process = psutil.Process()
    peak: dict[str, int] = {}
    rss, captions = [], 0
    t0 = time.monotonic()
    try:
        for c in vlm.watch(
            [s.url for s in streams],
            threshold=0,
            max_new_tokens=8,
            trigger=trigger,
            evidence=out,
            lookback=a.lookback,
            after=a.after,
        ):
            captions += 1
            peak[c.source or ""] = max(peak.get(c.source or "", 0), int(c.timings["lookback_bytes"]))
            now = time.monotonic() - t0
            if not rss or now - rss[-1][0] >= 10:
                rss.append((now, process.memory_info().rss))
            if now >= a.seconds:
                break
    finally:
        for s in streams:
            s.stop()
    cap = DEFAULT_CAP_MB * 2**20
    starts = sum(r.phase == "start" for r in records)
    clips = [r for r in records if r.phase == "clip"]
    print(cpu_line())
    print(f"{a.sources} sources {a.size} at 15 fps, {a.seconds:.0f} s, lookback {a.lookback:g} s, after {a.after:g} s")
    print(
        f"captions {captions}, events {starts}, clips written {len(clips)} ({sum(not r.clip['complete'] for r in clips)} cut short)"
    )
    for name, b in sorted(peak.items()):
        print(f"  {name}: ring + collecting clips peak {b / 2**20:.1f} MB (cap {DEFAULT_CAP_MB:g} MB)")
    first = next((m for t, m in rss if t >= 60), rss[0][1])
    print(
        f"RSS after 60 s {first / 2**20:.0f} MB, max {max(m for _, m in rss) / 2**20:.0f} MB, end {rss[-1][1] / 2**20:.0f} MB"
    )
    print("RSS each minute (MB):", " ".join(f"{m / 2**20:.0f}" for t, m in rss if int(t) % 60 < 10))
    print(json.dumps({"peak_bytes": peak, "cap_bytes": cap, "rss": rss[-1][1], "events": starts, "clips": len(clips)}))
    if any(b > cap for b in peak.values()):
        sys.exit("a ring went over its cap")


if __name__ == "__main__":
    main()
