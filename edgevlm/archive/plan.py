"""Which files an archive run captions, and where each one's output goes.

Directories are walked recursively and globs expanded (`**` included). Each input gets one output under OUT_DIR
that mirrors its path below the directory it was found in, so two cameras' `0001.mp4` do not collide. A video
gets `name.srt` (`.vtt`, `.jsonl`, `.txt`); an image gets `name.txt`, or `name.jsonl` (one record) with
--format jsonl. If two inputs would still write the same file (`a.mp4` and `a.mkv`), both keep their extension
(`a.mp4.srt`).
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputError
from ..media.video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
SUFFIX = {"srt": ".srt", "vtt": ".vtt", "jsonl": ".jsonl", "text": ".txt"}


@dataclass(frozen=True)
class Item:
    """One input and its output. Plain strings and numbers: it travels to worker processes and Ray actors."""

    input: str  # absolute path
    output: str  # absolute path
    kind: str  # "video" or "image"
    size: int
    mtime_ns: int

    def to_dict(self) -> dict:
        return asdict(self)


def is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def wanted(path: Path) -> str | None:
    ext = path.suffix.lower()
    return "video" if ext in VIDEO_EXTENSIONS else "image" if ext in IMAGE_EXTENSIONS else None


def find_inputs(specs: list[str]) -> list[tuple[Path, Path]]:
    """(file, the root its output path is relative to), sorted, each file once."""
    found: dict[Path, Path] = {}
    for spec in specs:
        if is_glob(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise InputError(f"{spec!r} matches no file.")
            for m in matches:
                p = Path(m)
                if p.is_file() and wanted(p):
                    found.setdefault(p.resolve(), p.resolve().parent)
        elif os.path.isdir(spec):
            root = Path(spec).resolve()
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    p = Path(dirpath) / name
                    if not name.startswith(".") and wanted(p):
                        found.setdefault(p, root)
        elif os.path.isfile(spec):
            p = Path(spec).resolve()
            if not wanted(p):
                raise InputError(f"{spec} is neither a video nor an image (by its extension).")
            found.setdefault(p, p.parent)
        else:
            raise InputError(f"{spec} does not exist.")
    return sorted(found.items())


def plan(specs: list[str], out_dir: str | os.PathLike, fmt: str) -> list[Item]:
    """Every input with its output path (outputs end in .srt/.vtt/.jsonl/.txt, so none can be an input)."""
    out = Path(out_dir).resolve()
    inputs = find_inputs(specs)
    if not inputs:
        raise InputError(f"no video or image found in {', '.join(specs)}.")
    targets = []
    for path, root in inputs:
        kind = wanted(path) or "image"  # find_inputs keeps only videos and images
        suffix = SUFFIX[fmt] if kind == "video" else (".jsonl" if fmt == "jsonl" else ".txt")
        rel = path.relative_to(root)
        targets.append((path, kind, out / rel.parent, rel.stem, rel.name, suffix))
    clashes = Counter(str(d / (stem + suffix)) for _, _, d, stem, _, suffix in targets)
    items = []
    for path, kind, directory, stem, name, suffix in targets:
        target = directory / ((name if clashes[str(directory / (stem + suffix))] > 1 else stem) + suffix)
        st = path.stat()
        items.append(Item(str(path), str(target), kind, st.st_size, st.st_mtime_ns))
    return items
