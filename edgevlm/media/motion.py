"""A cheap change detector: is this frame worth a caption, and is it a new scene?

A 64x36 grey thumbnail (area-averaged, so sensor noise and compression artefacts mostly cancel) is compared with
the last one kept; the score is the mean absolute difference in grey levels (0-255). It costs well under a
millisecond per frame, against about a second for the vision encoder, so it runs on every frame examined.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

THUMB = (64, 36)


def thumbnail(frame: np.ndarray) -> np.ndarray:
    import cv2

    img = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.resize(img, THUMB, interpolation=cv2.INTER_AREA).astype(np.float32)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey-level difference of two thumbnails."""
    return float(np.mean(np.abs(a - b)))


class MotionGate:
    """Remembers the last frame that was let through; `changed` says whether a new one differs enough.

    threshold: mean grey-level difference (0-255) below which a frame counts as the same scene as before. 0 lets
    every frame through.
    """

    def __init__(self, threshold: float = 6.0):
        if threshold < 0:
            raise InputError(
                f"threshold={threshold!r}: the motion threshold cannot be negative (0 lets every frame through)."
            )
        self.threshold = threshold
        self.reference: np.ndarray | None = None

    def changed(self, frame: np.ndarray, thumb: np.ndarray | None = None) -> bool:
        """True for the first frame and for frames that differ from the last one let through; lets it through.
        `thumb`: the frame's thumbnail when the caller already made it."""
        thumb = thumbnail(frame) if thumb is None else thumb
        if self.reference is None or difference(thumb, self.reference) >= self.threshold:
            self.reference = thumb
            return True
        return False
