"""The CPU line every benchmark table is printed with: model, cores, and the SIMD/matrix flags that decide
which kernels run (the VM changes between sessions; compare only rows measured under the same line)."""

from __future__ import annotations

import os
import platform

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_line() -> str:
    model, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(f for f in FLAGS if f in flags) or 'none listed'}"
