"""Tile-level feature reuse for a source whose frames change in parts (a fixed camera).

SmolVLM2 encodes each tile of a split image on its own (and edgevlm runs the encoder once per tile, so a tile's
features depend on its pixels alone), so a tile whose pixels are bit-identical to the same tile of the source's
last encoded frame has exactly the features it had then. The vision cache keys on whole images and cannot see
that; a TileReuse, one per source, keeps the last frame's preprocessed tiles and their features, and encodes only
the tiles that differ. Any change of geometry (frame size, tile grid) starts over, so features of different sizes
are never mixed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from ..errors import InputError


class TileReuse:
    """The last encoded frame of one source: its tiles' pixel values and features.

    Thread safety: one TileReuse serves one source; its calls are serialized by a lock, so a source captioned
    from two threads stays correct (each frame is compared with whichever frame was encoded last).

    Args:
        tolerance: 0 (default) reuses a tile only when its preprocessed pixels are bit-identical, which gives
            exactly the features a full encode gives. Above 0, a tile also counts as unchanged when the mean
            absolute difference of its pixels from the stored tile is at most this many grey levels (0-255): for
            a noisy camera, at the cost of features from a slightly different tile (the stored tile stays the
            reference, so slow drift accumulates until it crosses the tolerance).

    Example:
        import edgevlm

        vlm = edgevlm.load("./smolvlm2-256m-bundle")
        door = edgevlm.TileReuse()  # one per camera
        for frame in ["photo.jpg", "photo.jpg"]:
            r = vlm.caption(frame, reuse=door, max_new_tokens=8)
            print(r.tiles, r.reused_tiles)
    """

    def __init__(self, *, tolerance: float = 0.0):
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0 <= tolerance <= 255:
            raise InputError(f"tolerance={tolerance!r} must be a number of grey levels from 0 to 255 (0: exact).")
        self.tolerance = float(tolerance)
        self._lock = threading.Lock()
        self._pixels: np.ndarray | None = None  # (tiles, 3, T, T) of the stored frame
        self._features: np.ndarray | None = None  # (tiles, image_seq_len, hidden)
        self._grid: tuple[int, int] | None = None
        self.encoded = 0  # tiles encoded through this object, over its life
        self.reused = 0  # tiles served from the stored frame

    def reset(self) -> None:
        """Forget the stored frame (the next one is encoded in full), e.g. after a scene cut."""
        with self._lock:
            self._pixels = self._features = self._grid = None

    def encode(
        self,
        pixel_values: np.ndarray,
        grid: tuple[int, int],
        encode: Callable[[np.ndarray], np.ndarray],
        grey_level: float = 2 / 255,
    ) -> tuple[np.ndarray, int]:
        """Features of a frame's tiles, `encode` running only on those that changed; returns them and how many
        tiles were reused. grey_level: one grey level in pixel-value units (rescale factor / std), for the
        tolerance."""
        with self._lock:
            same_geometry = self._pixels is not None and self._grid == grid and self._pixels.shape == pixel_values.shape
            if not same_geometry:
                changed = list(range(len(pixel_values)))
            else:
                assert self._pixels is not None
                changed = [
                    i for i in range(len(pixel_values)) if not self._same(self._pixels[i], pixel_values[i], grey_level)
                ]
            fresh = encode(pixel_values[changed]) if changed else None
            if not same_geometry or self._features is None:
                assert fresh is not None
                features = fresh
                pixels = pixel_values.copy()
            else:
                features = self._features.copy()
                pixels = self._pixels
                assert pixels is not None
                if fresh is not None:
                    features[changed] = fresh
                    pixels[changed] = pixel_values[changed]
            self._pixels, self._features, self._grid = pixels, features, grid
            reused = len(pixel_values) - len(changed)
            self.encoded += len(changed)
            self.reused += reused
            return features, reused

    def _same(self, stored: np.ndarray, new: np.ndarray, grey_level: float) -> bool:
        if self.tolerance == 0:
            return bool(np.array_equal(stored, new))
        return float(np.mean(np.abs(stored - new))) <= self.tolerance * grey_level
