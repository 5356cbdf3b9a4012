"""Helpers for the hostile-input corpus: a work folder per case, bundle copies to tamper with, snapshots that show
whether anything was modified or left behind, and the CLI run as a real subprocess (optionally without root's
permission override, so permission cases mean something when the tests run as root)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgevlm.engine.bundle import MANIFEST, sha256_file

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
TEMP_MARKERS = (".partial",)


def drop_dac_capabilities() -> None:
    """preexec_fn: root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH obeys file modes like any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgevlm.cli", *args]


def run(
    args: list, env: dict | None = None, caps: bool = True, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    argv = cli_argv(*[os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])
    return subprocess.run(
        argv,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        preexec_fn=None if caps else drop_dac_capabilities,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: small files by content, large ones by size/mtime/inode, links by target."""
    out: dict[str, tuple] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = os.lstat(p)
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_file() and st.st_size < (1 << 21):
                try:
                    out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode)
                except OSError:
                    out[rel] = ("unreadable", st.st_size, st.st_mtime_ns, st.st_mode)
            elif p.is_file():
                out[rel] = ("big", st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)
            else:
                out[rel] = ("other", st.st_mode)
    return out


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if any(m in p.name for m in TEMP_MARKERS)] if root.exists() else []


def rewrite(path: Path, data: bytes | str) -> None:
    """Replace a file's content without touching other hard links to it."""
    path.unlink(missing_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


def link_copy(src: Path, dst: Path) -> Path:
    """A copy of a bundle whose ONNX files are hard links (cheap) and whose small files are real copies."""

    def copy(s, d):
        if os.path.getsize(s) > (1 << 20):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


def refresh_manifest(bundle: Path) -> None:
    """Recompute the manifest's checksums after a deliberate change, so only the change itself is under test."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    for rel in list(manifest["files"]):
        p = bundle / rel
        if p.exists():
            manifest["files"][rel] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    rewrite(bundle / MANIFEST, json.dumps(manifest))


def edit_json(path: Path, fn: Callable[[object], object]) -> None:
    rewrite(path, json.dumps(fn(json.loads(path.read_text()))))


@dataclass
class Case:
    """One hostile input. argv items may hold {w} (the case's folder), {B} (a good bundle), {ckpt} (a tiny
    checkpoint) and names of the standard inputs ({img}, {vid} ...)."""

    id: str
    argv: list[str]
    code: int
    err: str = ""  # regex the one error line must match (exit != 0), or stdout must match (exit 0)
    prep: Callable | None = None  # prep(env) before the run: make files, tamper with a bundle copy
    check: Callable | None = None  # check(env, result) after the generic checks
    outputs: tuple[str, ...] = ()  # files (relative to {w}) the run may create or change
    env: dict = field(default_factory=dict)
    caps: bool = True  # False: run without root's permission override
    driver: Callable | None = None  # driver(env, argv) -> CompletedProcess, for signals and live streams
    cwd: str | None = None  # run in this folder ({w} ...) instead of the test's


ERROR_LINE = re.compile(r"^error: .{20,}$")
