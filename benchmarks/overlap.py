"""Does encoding the next frame while the current caption decodes help? (issue 4, item 4)

Captions N distinct frames three ways and prints captions per second:
  sequential         encode, prefill, decode; then the next frame (what edgevlm does)
  overlapped         a second thread runs the vision encoder on frame i+1 while frame i decodes
  overlapped-1thread the same with one intra-op thread per session (the two stages split the cores)

    python benchmarks/overlap.py BUNDLE [--frames 6] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for _ in range(n)]


def sequential(vlm, images, new_tokens) -> float:
    t0 = time.perf_counter()
    for im in images:
        vlm.caption(im, max_new_tokens=new_tokens, split=False, ignore_eos=True)
    return time.perf_counter() - t0


def overlapped(vlm, images, new_tokens) -> float:
    t0 = time.perf_counter()

    def encode(image):  # fills the vision cache that caption() then reads
        vlm.encode(vlm.prepare(vlm.user_message(image, "x"), split=False))

    encode(images[0])
    for i, im in enumerate(images):
        worker = None
        if i + 1 < len(images):
            worker = threading.Thread(target=encode, args=(images[i + 1],))
            worker.start()
        vlm.caption(im, max_new_tokens=new_tokens, split=False, ignore_eos=True)  # vision from the cache
        if worker is not None:
            worker.join()
    return time.perf_counter() - t0


def main() -> None:
    import edgevlm

    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--variant", default="fp32")
    a = ap.parse_args()
    for label, threads, fn in [
        ("sequential", None, sequential),
        ("overlapped", None, overlapped),
        ("overlapped-1thread", 1, overlapped),
        ("sequential-1thread", 1, sequential),
    ]:
        vlm = edgevlm.load(a.bundle, variant=a.variant, threads=threads, vision_cache_size=a.frames + 2)
        vlm.caption(frames(1)[0], max_new_tokens=4, split=False)  # warm-up
        vlm.vision_cache.clear()
        imgs = frames(a.frames + 1)[1:]
        s = fn(vlm, imgs, a.new_tokens)
        print(f"{label:20s} {s:7.2f} s for {a.frames} captions = {a.frames / s:.3f} captions/s", flush=True)


if __name__ == "__main__":
    main()
