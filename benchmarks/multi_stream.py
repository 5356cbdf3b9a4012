"""Several live streams through one model: their newest frames captioned one after another, or together
(`Engine.caption_batch`, what `vlm.watch([...])` does each round), in one run.

    python benchmarks/multi_stream.py BUNDLE [--variants mixed,q4] [--streams 4] [--rounds 3] [--threads 2]

Each round takes one 640x480 frame per stream (different pictures), 32 new tokens each (end-of-sequence ignored,
so both ways do the same work); reports captions/s both ways, the ratio, and checks the answers are equal.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line


def frames(streams: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    out = []
    for i in range(streams):  # smooth, different pictures (a gradient rotated per stream, plus noise)
        base = np.stack([(xx * (i + 1)) % 256, (yy * (i + 2)) % 256, (xx + yy * i) % 256], -1)
        out.append(np.clip(base + rng.integers(-15, 15, base.shape), 0, 255).astype(np.uint8))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--variants", default="mixed,q4")
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args()

    import edgevlm

    images = frames(a.streams)
    kw = dict(max_new_tokens=a.new_tokens, split=False, cache=False, ignore_eos=True)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} · {cpu_line()} · {a.threads} threads")
    print("command: python " + " ".join(sys.argv))
    print("\n| variant | streams | one after another, captions/s | together, captions/s | ratio | answers equal |")
    print("|---|---|---|---|---|---|")
    for v in a.variants.split(","):
        vlm = edgevlm.load(a.bundle, variant=v, threads=a.threads, vision_cache_size=0)
        vlm.caption_batch(images, **kw)  # warm-up
        seq, bat, equal = [], [], True
        for _ in range(a.rounds):
            t = time.perf_counter()
            one = [vlm.caption(im, **kw) for im in images]
            seq.append(time.perf_counter() - t)
            t = time.perf_counter()
            many = vlm.caption_batch(images, **kw)
            bat.append(time.perf_counter() - t)
            equal &= [r.token_ids for r in one] == [r.token_ids for r in many]
        s, b = a.streams / float(np.median(seq)), a.streams / float(np.median(bat))
        print(f"| {v} | {a.streams} | {s:.2f} | {b:.2f} | {b / s:.2f}x | {equal} |")


if __name__ == "__main__":
    main()
