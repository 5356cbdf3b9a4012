"""Speed against detail for split images, as three named levels (the CLI's --detail, archive runs).

SmolVLM2 resizes an image's longer side to 4 tiles (2048 px for 512 px tiles) and encodes every tile plus a global
view: up to 17 encoder runs, most of a caption's time on a CPU. The model card's knob for fewer tiles is the
processor's size={"longest_edge": N}; `Engine.ask(..., longest_edge=N)` is the same knob, and the levels name
three settings of it (docs/benchmarks.md has the time of each on W2).
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError

DETAIL = {
    "low": "one tile, fastest",
    "medium": "up to 2 x 2 tiles plus the global view",
    "high": "the model's rule, up to 4 x 4 tiles plus the global view (default)",
}


def tiling(detail: str | None, tile: int) -> dict[str, Any]:
    """A detail level as keyword arguments of ask/caption/stream: low is one tile, medium resizes the longer side
    to two tiles before splitting, high (or None) is the model's own rule."""
    if detail == "low":
        return {"split": False}
    if detail == "medium":
        return {"longest_edge": 2 * tile}
    if detail in (None, "high"):
        return {}
    raise InputError(f"detail={detail!r} is not a detail level; use one of {', '.join(DETAIL)}.")
