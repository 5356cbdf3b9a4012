"""Camera sessions of the HTTP API: a client names a stream of frames (`"session": "door"` in a chat request) and
the server keeps that stream's last frame (an edgevlm.TileReuse), so a frame whose tiles did not change runs the
vision encoder only for those that did. Bounded: the least recently used session is dropped past the limit (its
next frame is simply encoded in full)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..engine.tile_reuse import TileReuse


class Sessions:
    def __init__(self, limit: int):
        self.limit = limit
        self._items: OrderedDict[str, TileReuse] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> TileReuse | None:
        """The session's TileReuse, made on first use; None when sessions are off (limit 0)."""
        if self.limit <= 0:
            return None
        with self._lock:
            reuse = self._items.get(name)
            if reuse is None:
                reuse = self._items[name] = TileReuse()
            self._items.move_to_end(name)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)
            return reuse

    def __len__(self) -> int:
        return len(self._items)
