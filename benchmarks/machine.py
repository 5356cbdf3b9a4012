"""The CPU line every benchmark table is printed with: model, cores, and the SIMD/matrix flags that decide
which kernels run (the VM changes between sessions; compare only rows measured under the same line)."""

from __future__ import annotations

import os
import platform

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, every flag) from the first CPU in /proc/cpuinfo."""
    model, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def cpu_flags() -> set[str]:
    """The flags of FLAGS this CPU has."""
    return _cpuinfo()[1] & set(FLAGS)


def cpu_line() -> str:
    model, flags = _cpuinfo()
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(f for f in FLAGS if f in flags) or 'none listed'}"
