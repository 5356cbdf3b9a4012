"""manifest.jsonl: what an archive run did, one row per input as it finished, and what resuming skips.

One writer (the process that plans the run) appends one complete, flushed and fsynced line per finished input:
its path, size and mtime, the output and its sha256, video duration, timings, and the error if it failed. An input
counts as finished when its last row says "done" for the same input size and mtime, and its output file is still
there with the same sha256. Anything else (no row, an error, a changed input, an output that was removed or edited)
is done again. A half-written last line, left by a crash, is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO

from ..engine.bundle_format import sha256_file
from ..errors import InputError, OutputError
from .plan import Item

NAME = "manifest.jsonl"


class Manifest:
    def __init__(self, out_dir: str | os.PathLike):
        self.dir = Path(out_dir)
        self.path = self.dir / NAME
        self.rows: dict[str, dict] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash
                    if isinstance(row, dict) and "input" in row:
                        self.rows[row["input"]] = row
        self._out: IO[str] | None = None
        self._lock: IO | None = None

    def open(self) -> Manifest:
        """Take the folder's lock (one run per OUT_DIR at a time) and open the manifest for appending."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / ".edgevlm-archive.lock", "w")  # noqa: SIM115 (held until close())
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InputError(
                f"another edgevlm run is writing to {self.dir}; wait for it or pick another output folder."
            ) from None
        self._out = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held until close())
        return self

    def finished(self, item: Item) -> bool:
        row = self.rows.get(item.input)
        if not row or row.get("status") != "done":
            return False
        if (row.get("input_size"), row.get("input_mtime_ns")) != (item.size, item.mtime_ns):
            return False
        output = Path(item.output)
        return output.is_file() and row.get("sha256") == sha256_file(output)

    def record(self, row: dict) -> None:
        if self._out is None:
            raise OutputError(f"the manifest in {self.dir} is not open; call open() first.")
        self.rows[row["input"]] = row
        self._out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._out.flush()
        os.fsync(self._out.fileno())

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def __enter__(self) -> Manifest:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
