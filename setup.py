"""Builds edgevlm's kernel library (cpp_bindings/kernels) into the package when this machine can, and carries on
without it when it cannot: everything in pyproject.toml stays declarative; this file only adds that one step.

What the build needs: CMake >= 3.18, a C++17 compiler, and ONNX Runtime's C/C++ headers (the onnxruntime wheel has
none). The headers are taken from ORT_INCLUDE or ONNXRUNTIME_ROOT, else /usr/include/onnxruntime (Debian's
libonnxruntime-dev), else fetched from Debian's archive by cpp_bindings/scripts/fetch-onnxruntime-headers.sh.
Missing any of them, the install prints one notice and the runtime uses ONNX Runtime's own kernels, as before.
EDGEVLM_BUILD_KERNELS=0 skips the step on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
KERNELS = ROOT / "cpp_bindings" / "kernels"
LIBRARY = "libedgevlm_kernels.so"


def _notice(why: str) -> None:
    print(
        f"edgevlm: the kernel library was not built ({why}); the runtime will use ONNX Runtime's kernels.",
        file=sys.stderr,
    )


def _headers(work: Path) -> Path | None:
    for env in ("ORT_INCLUDE", "ONNXRUNTIME_ROOT"):
        value = os.environ.get(env)
        if value:
            for candidate in (Path(value), Path(value) / "include", Path(value) / "include" / "onnxruntime"):
                if (candidate / "onnxruntime_cxx_api.h").is_file():
                    return candidate
    system = Path("/usr/include/onnxruntime")
    if (system / "onnxruntime_cxx_api.h").is_file():
        return system
    fetch = ROOT / "cpp_bindings" / "scripts" / "fetch-onnxruntime-headers.sh"
    if shutil.which("apt-get") and fetch.is_file():
        done = subprocess.run([str(fetch), str(work / "ort")], capture_output=True)
        found = work / "ort" / "include" / "onnxruntime"
        if done.returncode == 0 and (found / "onnxruntime_cxx_api.h").is_file():
            return found
    return None


def build_kernels(dest: Path) -> bool:
    """Build libedgevlm_kernels.so into `dest`; False (with a notice) where it cannot be built here."""
    if os.environ.get("EDGEVLM_BUILD_KERNELS", "1") == "0":
        _notice("EDGEVLM_BUILD_KERNELS=0")
        return False
    if not KERNELS.is_dir():
        return False
    cmake = shutil.which("cmake")
    if cmake is None:
        _notice("no cmake on PATH")
        return False
    with tempfile.TemporaryDirectory(prefix="edgevlm-kernels-") as tmp:
        work = Path(tmp)
        include = _headers(work)
        if include is None:
            _notice("no ONNX Runtime headers; set ORT_INCLUDE to a folder holding onnxruntime_cxx_api.h")
            return False
        steps = [
            [
                cmake,
                "-S",
                str(KERNELS),
                "-B",
                str(work / "build"),
                f"-DORT_INCLUDE={include}",
                "-DCMAKE_BUILD_TYPE=Release",
            ],
            [cmake, "--build", str(work / "build"), "-j", str(os.cpu_count() or 1)],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                _notice(f"{Path(step[0]).name} failed: {last[0]}")
                return False
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "build" / LIBRARY, dest / LIBRARY)
    return True


class BuildPy(build_py):
    def run(self):
        super().run()
        # An editable install imports the package from the source tree, so the library goes there.
        base = ROOT if getattr(self, "editable_mode", False) else Path(self.build_lib)
        build_kernels(base / "edgevlm" / "_kernels")


class BinaryDistribution(Distribution):
    """The wheel may hold a compiled library: tag it for this platform, not py3-none-any."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPy}, distclass=BinaryDistribution)
