"""A latency budget over a live stream: the share of captions within budget, what the planner chose, and how many
captions it took to re-plan when CPU hogs started and after they stopped.

    python benchmarks/budget_soak.py BUNDLE [--variant mixed] [--budget 1] [--seconds 300] [--hog-at 120]
        [--hog-for 60] [--hogs 2] [--size 1024x768]

The stream is ffmpeg's testsrc2 (moving content) served over HTTP on 127.0.0.1 in real time; the hogs are
`python -c "while True: pass"` processes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from machine import cpu_line
from videotools import HttpStream, free_port

import edgevlm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--variant", default="mixed")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--hog-at", type=float, default=120)
    ap.add_argument("--hog-for", type=float, default=60)
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    vlm = edgevlm.load(a.bundle, variant=a.variant, threads=a.threads)
    server = HttpStream(free_port(), size=a.size, rate=25, seconds=int(a.seconds) + 120, source="testsrc2").start()
    hogs: list[subprocess.Popen] = []
    rows, hog_on, hog_off = [], None, None
    t0 = time.monotonic()
    try:
        for c in vlm.watch(server.url, threshold=0, budget_s=a.budget):
            now = time.monotonic() - t0
            rows.append((now, c.latency_ms / 1e3, c.plan["detail"], c.plan["max_new_tokens"], c.timings["tiles"]))
            if hog_on is None and now >= a.hog_at:
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.hogs)]
                hog_on = len(rows)
            if hog_on is not None and hog_off is None and now >= a.hog_at + a.hog_for:
                for h in hogs:
                    h.kill()
                hog_off = len(rows)
            if now >= a.seconds:
                break
    finally:
        for h in hogs:
            h.kill()
        server.stop()
    within = sum(1 for r in rows if r[1] <= a.budget)
    print(cpu_line())
    print(f"{a.bundle} {a.variant}, budget {a.budget:g} s, {a.size} testsrc2 stream, {a.seconds:g} s, {a.hogs} hogs")
    print(f"captions {len(rows)}, within budget {within} ({100 * within / max(len(rows), 1):.1f} %)")
    changes = [(i, r) for i, r in enumerate(rows) if i == 0 or r[2:4] != rows[i - 1][2:4]]
    for i, (t, lat, detail, tokens, tiles) in changes:
        print(f"  caption {i:4d} at {t:6.1f} s: --detail {detail}, {tokens} tokens ({tiles} tiles), {lat:.2f} s")
    for name, at in (("hogs started", hog_on), ("hogs stopped", hog_off)):
        if at is not None:
            after = next((i - at + 1 for i, _ in changes if i >= at), None)
            print(f"{name} before caption {at}: the next plan change came {after} caption(s) later")


if __name__ == "__main__":
    main()
