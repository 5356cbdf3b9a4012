"""Where an output file goes, checked before any work and written so that nothing is ever destroyed.

Three ways to write, chosen by what the target is:
- a regular file (or a path that does not exist yet): a hidden temporary file beside it, renamed over it at the
  end, so a reader never sees half a file and a failed run leaves nothing (`atomic`);
- a live log: the file is opened for appending and every record is one complete line, flushed as it comes, so a
  lost stream or a killed process keeps every caption already shown (`append`);
- a stream (`-`, a FIFO, a terminal, /dev/null): written as records come; there is nothing to rename;
- one of this process's open descriptors named as a path (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N):
  written through that descriptor, so `-o /dev/stdout >> log.txt` appends to the log. Resolving such a path to
  the file behind it and renaming over that file would silently replace everything the log held.

Symlinks are written through: the link stays and its target gets the new content. A target that is one of the
run's inputs (same inode, through any path, link or hard link), lies inside the model folder, is a folder, or is
in a folder that cannot be written is refused up front with a one-line OutputError.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from ..errors import OutputError

STDOUT = "-"


def _describe(e: OSError) -> str:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return "the disk is full; free some space or write somewhere else"
    if e.errno == errno.EROFS:
        return "the file system is read-only; write somewhere else"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied; write somewhere you may write"
    return f"{e.strerror or e}"


_FD_DIR = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd")


def open_descriptor(path: str | os.PathLike) -> int | None:
    """The descriptor of this process that `path` names (/dev/stdout, /dev/fd/1, a link to them ...), else None.

    The link chain is walked one step at a time: the kernel's own resolution of /proc/self/fd/N jumps straight to
    the file behind the descriptor, and writing to that file by name loses the descriptor's offset and append mode.
    """
    p = os.path.abspath(os.fspath(path))
    for _ in range(40):  # the kernel's own limit on nested links
        m = _FD_DIR.fullmatch(os.path.realpath(os.path.dirname(p)))
        name = os.path.basename(p)
        if m and name.isdigit():
            return int(name) if int(m.group(1)) == os.getpid() else None
        if not os.path.islink(p):
            return None
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class OutputTarget:
    """A checked `-o` argument: `path` is what the user typed, `real` where bytes will land (links followed)."""

    def __init__(
        self,
        path: str | os.PathLike | None,
        inputs: Iterable[str | os.PathLike] = (),
        model_dir: str | os.PathLike | None = None,
    ):
        if path is not None and os.fspath(path) == "":
            raise OutputError("the output file name is empty; pass -o FILE, or -o - for standard output.")
        self.path = None if path is None or os.fspath(path) == STDOUT else Path(path)
        self.real: Path | None = None
        self.fd: int | None = None  # set when the path names one of this process's open descriptors
        self.is_stream = self.path is None
        if self.path is None:
            return
        self.fd = open_descriptor(self.path)
        if self.fd is not None:
            self._check_descriptor(self.fd, inputs)
            return
        try:
            st = os.stat(self.path)  # follows links: /dev/stdout may be a pipe, a terminal or a file
        except FileNotFoundError:
            st = None
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {_describe(e)}.") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OutputError(
                f"the output {self.path} is a folder; give a file name, e.g. {self.path / 'captions.srt'}."
            )
        for i in inputs:
            if _same_file(self.path, Path(i)):
                raise OutputError(
                    f"the output {self.path} is the input {i}; writing there would destroy it. Choose another output file name."
                )
        if st is not None and not stat.S_ISREG(st.st_mode):
            if not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
                raise OutputError(f"the output {self.path} is not a regular file; choose a file name.")
            self.is_stream, self.real = True, self.path  # a device, pipe or socket: written as records come
            if not os.access(self.path, os.W_OK):
                raise OutputError(f"cannot write {self.path}: permission denied.")
            return
        real = Path(os.path.realpath(self.path))
        self.real = real
        if model_dir is not None and Path(model_dir).is_dir():
            model_real = Path(os.path.realpath(model_dir))
            if real == model_real or model_real in real.parents:
                raise OutputError(
                    f"the output {self.path} is inside the model folder {model_dir}; writing there would "
                    f"alter the model. Choose a file outside it."
                )
        if not real.parent.is_dir():
            raise OutputError(f"cannot write {self.path}: folder {real.parent} does not exist; create it first.")
        if real.exists() and not os.access(real, os.W_OK):
            raise OutputError(
                f"cannot write {self.path}: the file is read-only; choose another name or change its permissions."
            )

    def _check_descriptor(self, fd: int, inputs: Iterable[str | os.PathLike]) -> None:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            raise OutputError(
                f"cannot write {self.path}: descriptor {fd} is not open in this process; "
                f"redirect it (e.g. {fd}>file) or name a file."
            ) from None
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise OutputError(f"cannot write {self.path}: descriptor {fd} is open for reading only.")
        st = os.fstat(fd)
        for i in inputs:
            try:
                same = os.path.samestat(st, os.stat(i))
            except OSError:
                same = False
            if same:
                raise OutputError(
                    f"the output {self.path} is the input {i}; writing there would destroy it. Choose another output file name."
                )
        self.is_stream = True

    def open(self, mode: str = "atomic") -> OutputStream:
        """Open for writing now: a failure (read-only file system, no permission) surfaces before any work."""
        return OutputStream(self, mode)


def _create_temporary(real: Path, suffix: str = "") -> tuple[Path, int]:
    """A new hidden file beside `real`, with the mode a plain open() would give.

    Not tempfile.mkstemp: it makes 0600 files, and reading the umask to widen them means setting it, process-wide,
    under every other thread's feet. O_CREAT with 0666 lets the kernel apply the umask itself.
    """
    for _ in range(100):
        tmp = real.parent / f".{real.name}.{secrets.token_hex(4)}.partial{suffix}"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(real.parent))


class OutputStream:
    """A text stream into an OutputTarget; `commit()` publishes an atomic file, `discard()` leaves nothing."""

    def __init__(self, target: OutputTarget, mode: str):
        if mode not in ("atomic", "append"):
            raise OutputError(f"mode={mode!r}: an output stream is 'atomic' or 'append'.")
        self.target, self.mode = target, mode
        self._tmp: Path | None = None
        self._closed = False
        self._written = 0
        # An appended log that did not exist and never got a line is removed again: a failed start leaves nothing.
        self._created = mode == "append" and target.real is not None and not target.real.exists()
        try:
            if target.fd is not None:
                # A duplicate: the caller's descriptor keeps its offset and O_APPEND and stays open after us.
                self._out: IO[str] = os.fdopen(os.dup(target.fd), "w", encoding="utf-8", newline="\n")
            elif target.real is None:
                self._out = sys.stdout
            elif target.is_stream:
                self._out = open(target.real, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 (held until close())
            elif mode == "append":
                self._out = open(target.real, "a", encoding="utf-8", newline="\n")  # noqa: SIM115 (held until close())
            else:
                self._tmp, fd = _create_temporary(target.real)
                self._out = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        except OSError as e:
            raise OutputError(f"cannot write {target.path}: {_describe(e)}.") from None

    @property
    def name(self) -> str:
        return "standard output" if self.target.path is None else str(self.target.path)

    def write(self, text: str) -> None:
        """Write one complete record and push it to the OS (a crash after this keeps it)."""
        try:
            self._out.write(text)
            self._out.flush()
            self._written += len(text)
        except BrokenPipeError:
            if self._out is sys.stdout:
                raise  # `edgevlm ... | head`: the reader left; the CLI stops quietly
            self.discard()
            raise OutputError(f"could not write {self.name}: the reader of the pipe went away.") from None
        except OSError as e:
            self.discard()
            raise OutputError(f"could not write {self.name}: {_describe(e)}.") from None

    def commit(self) -> None:
        if self._closed:
            return
        try:
            self._out.flush()
            if self._out is not sys.stdout:
                if self._tmp is not None or self.mode == "append":
                    os.fsync(self._out.fileno())
                self._out.close()
            if self._tmp is not None and self.target.real is not None:
                os.replace(self._tmp, self.target.real)
                self._tmp = None
            self._remove_if_unused()
        except OSError as e:
            self.discard()
            raise OutputError(f"could not write {self.name}: {_describe(e)}. Nothing was written.") from None
        self._closed = True

    def discard(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._out is not sys.stdout:
            try:
                self._out.close()
            except OSError:
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        if self._created and not self._written and self.target.real is not None:
            self.target.real.unlink(missing_ok=True)
