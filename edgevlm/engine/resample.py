"""Pillow's LANCZOS resize, byte for byte, on every core.

SmolVLM2's rule resizes a 512 px photo to 2048 px and back to 512 px: ~190 M multiply-adds, the largest piece of a
W1 caption outside ONNX Runtime. Where edgevlm's kernel library is built, the C library's resampler does it
(cpp_bindings/src/resample.cpp through `kernels.resize`: Pillow's fixed-point arithmetic on vector kernels, the
two resizes fused so the 2048 px image is never written; 53 -> 7 ms on the AMX machine, docs/benchmarks.md).

Otherwise Pillow does, in strips: Pillow resamples one axis at a time through an 8-bit intermediate image, and each
output row of the horizontal pass (each column of the vertical pass) depends only on its own input row (column).
So a pass cut into strips, each strip resized by Pillow alone on its own thread (Pillow releases the GIL while it
resamples), gives the same bytes as the one call. tests/test_preprocess.py checks both ways' bytes against
`Image.resize` on many sizes and modes.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from . import kernels

_MODES = ("RGB", "RGBa", "L")  # 8 bits per band, each band resampled on its own: the library's too
_MIN_WORK = 512 * 512  # output pixels of a pass below which one thread is quicker than the hand-off
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:  # a forked child has none of the parent's threads: it makes its own pool
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def resize_lanczos(im: Image.Image, width: int, height: int, workers: int | None = None) -> Image.Image:
    """`im.resize((width, height), Image.Resampling.LANCZOS)` on `workers` threads (default: one per core)."""
    return resize_lanczos_twice(im, (width, height), None, workers)


def resize_lanczos_twice(
    im: Image.Image, first: tuple[int, int], then: tuple[int, int] | None, workers: int | None = None
) -> Image.Image:
    """`im.resize(first, LANCZOS).resize(then, LANCZOS)` (`then` None: the first alone), the same bytes; the
    library fuses the two where one upscales and the other downscales (SmolVLM2's 512 -> 2048 -> 512)."""
    workers = workers or os.cpu_count() or 1
    if then is not None and first == im.size:
        first, then = then, None
    if im.size == first and then is None:  # before any premultiplying, as Pillow: RGBA -> RGBa -> RGBA loses bits
        return im.copy()
    if im.mode == "RGBA":  # Pillow premultiplies alpha around both passes of each resize, so must we
        once = resize_lanczos_twice(im.convert("RGBa"), first, None, workers).convert("RGBA")
        return once if then is None else resize_lanczos_twice(once, then, None, workers)
    if im.mode in _MODES:
        pixels = np.asarray(im)
        done = kernels.resize(pixels.reshape(pixels.shape[:2] + (-1,)), first, then, workers)
        if done is not None:
            return Image.frombytes(im.mode, (done.shape[1], done.shape[0]), done.tobytes())
    out = _strips(im, *first, workers)
    return out if then is None else _strips(out, *then, workers)


def _strips(im: Image.Image, width: int, height: int, workers: int) -> Image.Image:
    """Pillow's resize, each pass cut into `workers` strips."""
    if workers == 1 or im.size == (width, height) or im.mode not in _MODES:
        return im.resize((width, height), resample=Image.Resampling.LANCZOS)
    shrink_x, shrink_y = im.width - width, im.height - height
    if shrink_y > 0 and shrink_y > 2 * shrink_x:  # Pillow 13 resamples the height first here: fewer rows after
        return _horizontal(_vertical(im, height, workers), width, workers)
    return _vertical(_horizontal(im, width, workers), height, workers)


def _horizontal(im: Image.Image, width: int, workers: int) -> Image.Image:
    if width == im.width:
        return im
    strips = _cuts(im.height, workers if width * im.height >= _MIN_WORK else 1)
    parts = _map(
        lambda a, b: im.crop((0, a, im.width, b)).resize((width, b - a), resample=Image.Resampling.LANCZOS), strips
    )
    out = Image.new(im.mode, (width, im.height))
    for (a, _), part in zip(strips, parts):
        out.paste(part, (0, a))
    return out


def _vertical(im: Image.Image, height: int, workers: int) -> Image.Image:
    if height == im.height:
        return im
    strips = _cuts(im.width, workers if im.width * height >= _MIN_WORK else 1)
    parts = _map(
        lambda a, b: im.crop((a, 0, b, im.height)).resize((b - a, height), resample=Image.Resampling.LANCZOS), strips
    )
    out = Image.new(im.mode, (im.width, height))
    for (a, _), part in zip(strips, parts):
        out.paste(part, (a, 0))
    return out


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _map(fn, strips: list[tuple[int, int]]) -> list[Image.Image]:
    if len(strips) == 1:
        return [fn(*strips[0])]
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="edgevlm-resize")
    futures = [_pool.submit(fn, a, b) for a, b in strips[1:]]
    first = fn(*strips[0])  # the calling thread takes a strip too
    return [first] + [f.result() for f in futures]
