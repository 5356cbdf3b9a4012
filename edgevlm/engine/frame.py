"""A decoded video frame as the engine takes it: pixels and a timestamp, nothing about where it came from (files,
cameras and streams are the media layer's concern)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One decoded frame: RGB uint8 (H, W, 3), its presentation time in seconds, its index in decode order, and
    when it was captured (time.monotonic(); for measuring latency)."""

    image: np.ndarray
    timestamp: float
    index: int = 0
    captured: float = field(default_factory=time.monotonic)
