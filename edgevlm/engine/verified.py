"""Which model files were already hashed and matched their manifest, so a load need not read gigabytes again.

Each stamp binds a sha256 to the file's identity on disk: device, inode, size, mtime and ctime (nanoseconds).
Writing a file in place, replacing it, or touching its times back changes its ctime, which only the kernel sets,
so any change sends the file back to a full hash. The stamps live in the user's cache
(`$EDGEVLM_CACHE/verified.json`, default `~/.cache/edgevlm`), never in a bundle, which may be read-only or shared.
A cache that cannot be read or written only means hashing every time, as before. The C library reads and writes
the same file in the same format (cpp_bindings/src/bundle.cpp), so either runtime's first load spares the other's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_LIMIT = 4096  # stamps kept: a long-lived machine with many bundles does not grow the file without bound


def cache_dir() -> Path:
    base = os.environ.get("EDGEVLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "edgevlm"
    )
    return Path(base)


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class Stamps:
    def __init__(self, path: Path, entries: dict[str, dict]):
        self.path, self.entries, self.changed = path, entries, False

    @classmethod
    def load(cls) -> Stamps:
        path = cache_dir() / "verified.json"
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, dict):
                entries = {}
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries)

    def holds(self, path: Path, sha256: str) -> bool:
        """Whether `path` was hashed to `sha256` and is, by its identity on disk, the same file since."""
        entry = self.entries.get(str(path.resolve()))
        try:
            return isinstance(entry, dict) and entry.get("sha256") == sha256 and entry.get("id") == _identity(path)
        except OSError:
            return False

    def add(self, path: Path, sha256: str) -> None:
        key = str(path.resolve())
        self.entries.pop(key, None)  # re-inserted last: the oldest stamps are the first dropped
        self.entries[key] = {"sha256": sha256, "id": _identity(path)}
        self.changed = True

    def save(self) -> None:
        """Write atomically (a temporary file renamed over); give up silently where the cache is not writable."""
        if not self.changed:
            return
        while len(self.entries) > _LIMIT:
            self.entries.pop(next(iter(self.entries)))
        self.changed = False
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".verified.", suffix=".partial", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(self.entries, f)
            os.replace(tmp, self.path)
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
