"""What TileReuse(tolerance=N) costs in answers: a noisy fixed camera (the same photo with fresh noise of +-NOISE
grey levels in every frame, which defeats exact reuse), captioned greedily with reuse at each tolerance and without
reuse; for each tolerance, the tiles encoded per frame, the features' least token cosine against a full encode,
and how many answers keep the tokens of a full encode (with a random vision tower, as the local checkpoints have,
the answers barely depend on the image: the cosine is the measure that carries over).

    python benchmarks/tile_tolerance.py BUNDLE PHOTO [--variant mixed] [--noise 2] [--tolerances 0,1,2,4]
        [--frames 6] [--size 1024x768]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line

import edgevlm


def features(vlm, frame, **kw) -> np.ndarray:
    return vlm.encode(vlm.prepare(vlm.user_message(frame, "Describe.", **kw))).features


def least_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("photo", type=Path)
    ap.add_argument("--variant", default="mixed")
    ap.add_argument("--noise", type=int, default=2)
    ap.add_argument("--tolerances", default="0,1,2,4")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    scene = np.array(Image.open(a.photo).convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.int16)
    rng = np.random.default_rng(0)
    frames = [
        np.clip(scene + rng.integers(-a.noise, a.noise + 1, scene.shape), 0, 255).astype(np.uint8)
        for _ in range(a.frames + 1)
    ]
    vlm = edgevlm.load(a.bundle, variant=a.variant, threads=a.threads)
    plain = [vlm.caption(f, cache=False, max_new_tokens=a.max_new_tokens).token_ids for f in frames[1:]]
    full = [features(vlm, f, cache=False) for f in frames[1:]]
    print(cpu_line())
    print(f"{a.bundle} {a.variant}, {a.size}, noise +-{a.noise} grey levels, {a.frames} frames after the first")
    print("| tolerance | tiles encoded / frame | least token cosine | answers equal to a full encode | tokens equal |")
    print("|---|---|---|---|---|")
    for tolerance in (float(t) for t in a.tolerances.split(",")):
        reuse = edgevlm.TileReuse(tolerance=tolerance)
        vlm.caption(frames[0], reuse=reuse, max_new_tokens=1)
        encoded, equal, shares, cosines = [], 0, [], []
        probe = edgevlm.TileReuse(tolerance=tolerance)  # the same decisions, for the features alone
        features(vlm, frames[0], reuse=probe)
        for f, want, ref in zip(frames[1:], plain, full):
            cosines.append(least_cosine(features(vlm, f, reuse=probe), ref))
            r = vlm.caption(f, reuse=reuse, max_new_tokens=a.max_new_tokens)
            encoded.append(r.tiles - r.reused_tiles)
            equal += r.token_ids == want
            same = sum(1 for x, y in zip(r.token_ids, want) if x == y)
            shares.append(same / max(len(want), 1))
        print(
            f"| {tolerance:g} | {statistics.median(encoded):g} of {r.tiles} | {min(cosines):.5f} | "
            f"{equal} of {len(plain)} | {100 * statistics.mean(shares):.0f} % |"
        )


if __name__ == "__main__":
    main()
