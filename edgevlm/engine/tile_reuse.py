"""Tile-level feature reuse for a source whose frames change in parts (a fixed camera).

SmolVLM2 encodes each tile of a split image on its own (and edgevlm runs the encoder once per tile, so a tile's
features depend on its pixels alone), so a tile whose pixels are the same as the same tile of the source's last
encoded frame has exactly the features it had then. The vision cache keys on whole images and cannot see that; a
TileReuse, one per source, keeps the last frame's tiles (the resized bytes, before normalization: a quarter of the
float pixel values) and their features, and encodes only the tiles that differ. Any change of geometry (frame
size, tile grid) or of model starts over, so features of different sizes or models are never mixed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

from ..errors import InputError
from .preprocess import ProcessedImage


class TileReuse:
    """The last encoded frame of one source: its tiles and their features.

    Thread safety: calls are serialized by a lock, so a source captioned from two threads stays correct (each frame
    is compared with whichever frame was encoded last); one TileReuse per source is what saves work.

    Args:
        tolerance: 0 (default) reuses a tile only when its resized pixels are the same bytes, which gives exactly
            the features, and so the tokens, of a full encode. Above 0, a tile also counts as unchanged when the
            mean absolute difference of its bytes from the stored tile is at most this many grey levels (0-255):
            for a noisy camera, no longer exact (the stored tile stays the reference, so slow drift is caught once
            it crosses the tolerance).

    Example:
        import edgevlm

        vlm = edgevlm.load("./smolvlm2-256m-bundle")
        door = edgevlm.TileReuse()  # one per camera
        for frame in ["photo.jpg", "photo.jpg"]:
            r = vlm.caption(frame, reuse=door, max_new_tokens=8)
            print(r.tiles, r.reused_tiles)
    """

    def __init__(self, *, tolerance: float = 0.0):
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or not math.isfinite(tolerance)
            or not 0 <= tolerance <= 255
        ):
            raise InputError(f"tolerance={tolerance!r} must be a number of grey levels from 0 to 255 (0: exact).")
        self.tolerance = float(tolerance)
        self._lock = threading.Lock()
        self._tiles: np.ndarray | None = None  # (tiles, T, T, 3) uint8 of the stored frame
        self._features: np.ndarray | None = None  # (tiles, image_seq_len, hidden)
        self._grid: tuple[int, int] | None = None
        self._encoder: Callable | None = None  # whose features these are: another model starts over
        self.encoded = 0  # tiles encoded through this object, over its life
        self.reused = 0  # tiles served from the stored frame

    def reset(self) -> None:
        """Forget the stored frame (the next one is encoded in full), e.g. after a scene cut."""
        with self._lock:
            self._tiles = self._features = self._grid = self._encoder = None

    def encode(self, image: ProcessedImage, encode: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
        """Features of an image's tiles, `encode` (pixel values -> features) running only on the tiles that
        changed; returns the features and how many tiles were reused."""
        new = image.tiles if image.tiles is not None else image.pixel_values  # process_image keeps the bytes
        grid = (image.rows, image.cols)
        with self._lock:
            old, features = self._tiles, self._features
            if (
                old is None
                or features is None
                or self._grid != grid
                or old.shape != new.shape
                or self._encoder != encode
            ):
                changed = list(range(len(new)))
                old = features = None
            else:
                changed = [i for i in range(len(new)) if not self._same(old[i], new[i])]
            fresh = encode(image.pixel_values[changed]) if changed else None
            if old is None or features is None:
                assert fresh is not None
                old, features = new.copy(), fresh
            elif fresh is not None:
                features = features.copy()  # the caller may still hold the previous frame's array
                features[changed] = fresh
                old[changed] = new[changed]
            self._tiles, self._features, self._grid, self._encoder = old, features, grid, encode
            reused = len(new) - len(changed)
            self.encoded += len(changed)
            self.reused += reused
            return features, reused

    def _same(self, stored: np.ndarray, new: np.ndarray) -> bool:
        if self.tolerance == 0:
            return bool(np.array_equal(stored, new))
        return float(np.mean(np.abs(stored.astype(np.int16) - new))) <= self.tolerance
