"""Limits checked before work starts, so an oversized input fails in a moment instead of after minutes or gigabytes.

Kept apart from the modules that enforce them so the CLI can show the defaults without importing numpy or Pillow.
"""

from __future__ import annotations

import os

# 100 megapixels (a 12000x12000 PNG is 144 MP: 432 MB decoded, ~1.7 GB on the way to RGB). The model never sees more
# than 2048 px on the longest edge, so larger inputs only cost memory. Override per load() or with the variable.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000


def max_image_pixels(value: int | None = None) -> int:
    """The pixel limit in force: the argument, else $EDGEVLM_MAX_IMAGE_PIXELS, else the default."""
    if value is not None:
        return int(value)
    env = os.environ.get("EDGEVLM_MAX_IMAGE_PIXELS")
    return int(env) if env and env.strip().isdigit() and int(env) > 0 else DEFAULT_MAX_IMAGE_PIXELS
