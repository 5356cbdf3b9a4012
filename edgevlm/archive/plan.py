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
    kinds = {path: wanted(path) or "image" for path, _ in inputs}  # find_inputs keeps only videos and images
    suffixes = {p: SUFFIX[fmt] if k == "video" else (".jsonl" if fmt == "jsonl" else ".txt") for p, k in kinds.items()}
    # Below OUT_DIR as below the folder each input was found in; where two inputs would share an output, first
    # both keep their extension (a.mp4.srt, a.mkv.srt), then both go below their folder's name (cam1/door.mp4.srt,
    # cam2/door.mp4.srt for the same file name in two folders given). An output is never shared.
    roots = dict(inputs)
    targets = {p: _mirrored(out, p, roots[p], suffixes[p]) for p in roots}
    for clashing in _clashes(targets):
        targets.update({p: _mirrored(out, p, roots[p], suffixes[p], keep_extension=True) for p in clashing})
    for clashing in _clashes(targets):
        targets.update({p: out / roots[p].name / targets[p].relative_to(out) for p in clashing})
    for a, b, *_ in _clashes(targets):
        raise InputError(f"{a} and {b} would write the same output {targets[a]}; give folders of distinct names.")
    items = []
    for path in roots:
        st = path.stat()
        items.append(Item(str(path), str(targets[path]), kinds[path], st.st_size, st.st_mtime_ns))
    return items


def _mirrored(out: Path, path: Path, root: Path, suffix: str, keep_extension: bool = False) -> Path:
    rel = path.relative_to(root)
    return out / rel.parent / ((rel.name if keep_extension else rel.stem) + suffix)


def _clashes(targets: dict[Path, Path]) -> list[list[Path]]:
    """Groups of inputs that share an output."""
    groups: dict[Path, list[Path]] = {}
    for path, target in targets.items():
        groups.setdefault(target, []).append(path)
    return [paths for paths in groups.values() if len(paths) > 1]
