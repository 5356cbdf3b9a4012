"""W1's resize (512 -> 2048 -> 512, SmolVLM2's rule for one unsplit tile) through the C library's resampler, as the
Python runtime calls it (the kernel library), on 1 and 2 threads, against Pillow's two LANCZOS resizes.

    python benchmarks/resample_speed.py [--runs 30] [--rounds 3]
    EDGEVLM_RESAMPLER=avx2 python benchmarks/resample_speed.py   # cap the kernel set (generic, avx2, avxvnni)

Prints medians and minima in ms per image for each round (rounds repeat the set, so a host's noisy phase shows),
and checks that the bytes equal Pillow's. The time is the resize alone: the C library's "of which resizing"
(benchmarks/compare_cpp.py) adds the split into planes and the normalization.
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


def timed(fn, runs: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    from edgevlm.engine import kernels

    pixels = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    ours = kernels.resize(pixels, (2048, 2048), (512, 512), 1)
    if ours is None:
        sys.exit("the kernel library is not built here (pip install with a compiler, or EDGEVLM_KERNELS_LIBRARY)")

    def pillow() -> np.ndarray:
        big = Image.fromarray(pixels).resize((2048, 2048), Image.Resampling.LANCZOS)
        return np.asarray(big.resize((512, 512), Image.Resampling.LANCZOS))

    assert np.array_equal(ours, pillow()), "the library's bytes differ from Pillow's"
    print(cpu_line())
    print("| round | library, 1 thread | library, 2 threads | Pillow |")
    print("|---|---|---|---|")
    for r in range(a.rounds):
        cells = [timed(lambda t=t: kernels.resize(pixels, (2048, 2048), (512, 512), t), a.runs) for t in (1, 2)]
        cells.append(timed(pillow, max(a.runs // 10, 3)))
        print(f"| {r + 1} | " + " | ".join(f"{med:.2f} (min {low:.2f}) ms" for med, low in cells) + " |")


if __name__ == "__main__":
    main()
