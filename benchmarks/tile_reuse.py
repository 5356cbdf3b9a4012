"""Captions per second of a fixed camera with and without tile reuse (edgevlm.TileReuse), in one process.

The scene is a photo resized to WxH with a 48-pixel box moving in its top-left corner, captioned at the model's
own detail (split): with reuse a frame encodes the corner's tile(s) and the global view, without it every tile.
The two modes alternate frame by frame (this machine's speed drifts), and each frame's tokens are checked equal.

    python benchmarks/tile_reuse.py BUNDLE PHOTO [--variant mixed] [--size 1024x768] [--frames 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line

import edgevlm


def frames(photo: Path, size: tuple[int, int], n: int) -> list[np.ndarray]:
    scene = np.array(Image.open(photo).convert("RGB").resize(size, Image.Resampling.LANCZOS))
    out = []
    for i in range(n + 1):
        f = scene.copy()
        x = (i * 7) % 120
        f[16:64, x : x + 48] = (255, 0, 0)
        out.append(f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("photo", type=Path)
    ap.add_argument("--variant", default="mixed")
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    vlm = edgevlm.load(a.bundle, variant=a.variant, threads=a.threads)
    reuse = edgevlm.TileReuse()
    shots = frames(a.photo, size, a.frames)
    vlm.caption(shots[0], reuse=reuse, max_new_tokens=a.max_new_tokens)  # the first frame: every tile
    vlm.caption(shots[0], cache=False, max_new_tokens=a.max_new_tokens)  # warm-up of the plain path
    rows: dict[str, list[tuple[float, float, int]]] = {"reuse": [], "plain": []}
    for i, frame in enumerate(shots[1:]):
        order = ("reuse", "plain") if i % 2 == 0 else ("plain", "reuse")
        tokens = {}
        for mode in order:
            t = time.perf_counter()
            r = vlm.caption(
                frame, max_new_tokens=a.max_new_tokens, **({"reuse": reuse} if mode == "reuse" else {"cache": False})
            )
            rows[mode].append((time.perf_counter() - t, r.vision_ms, r.tiles - r.reused_tiles))
            tokens[mode] = r.token_ids
        assert tokens["reuse"] == tokens["plain"], f"frame {i + 1}: the tokens differ"
    print(cpu_line())
    print(f"{a.bundle} {a.variant}, {a.size}, {a.frames} frames, {a.max_new_tokens} new tokens, {a.threads} threads")
    print("| mode | tiles encoded / frame | vision ms / frame | s / caption | captions/s |")
    print("|---|---|---|---|---|")
    for mode, got in rows.items():
        s = statistics.median(t for t, _, _ in got)
        vision = statistics.median(v for _, v, _ in got)
        encoded = statistics.median(n for _, _, n in got)
        print(f"| {mode} | {encoded:g} of {r.tiles} | {vision:.0f} | {s:.3f} | {1 / s:.2f} |")
    ratio = statistics.median(t for t, _, _ in rows["plain"]) / statistics.median(t for t, _, _ in rows["reuse"])
    print(f"captions/s with reuse: {ratio:.2f}x; tokens equal on every frame")


if __name__ == "__main__":
    main()
