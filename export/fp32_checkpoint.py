"""A checkpoint's safetensors weights as fp32 files, converted one tensor at a time with plain reads.

Why: the released SmolVLM2 checkpoints are bf16. transformers loads an fp32 file lazily (memory-mapped views,
pages read as they are used), but converting bf16 to fp32 at load keeps the whole mapped bf16 file resident
beside the fp32 copy: 13.6 GB peak for 2.2B, before anything is exported. Converting to an fp32 file first costs
one tensor of memory and 9 GB of temporary disk, and lets every export stage load the model lazily and drop it
again (docs/design.md, "Export within memory").
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

_FLOATS = {"BF16", "F16", "F32", "F64"}


def _header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def is_fp32(source: Path) -> bool:
    """Every floating-point tensor of every safetensors file is already fp32."""
    files = sorted(source.glob("*.safetensors"))
    return bool(files) and all(
        info["dtype"] not in _FLOATS - {"F32"}
        for f in files
        for name, info in _header(f)[0].items()
        if name != "__metadata__"
    )


def _to_f32(raw: bytes, dtype: str) -> bytes:
    if dtype == "BF16":  # bf16 is the top half of an fp32
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).tobytes()
    return np.frombuffer(raw, dtype={"F16": np.float16, "F64": np.float64}[dtype]).astype(np.float32).tobytes()


def convert_file(src: Path, dst: Path) -> None:
    header, data_start = _header(src)
    meta = header.pop("__metadata__", None)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    out, offset = {}, 0
    for name in order:
        info = header[name]
        begin, end = info["data_offsets"]
        size = (
            (end - begin) * 2
            if info["dtype"] in ("BF16", "F16")
            else (end - begin) // 2
            if info["dtype"] == "F64"
            else end - begin
        )
        out[name] = {
            "dtype": "F32" if info["dtype"] in _FLOATS else info["dtype"],
            "shape": info["shape"],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if meta is not None:
        out["__metadata__"] = meta
    text = json.dumps(out, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(text)))
        fout.write(text)
        for name in order:
            info = header[name]
            begin, end = info["data_offsets"]
            fin.seek(data_start + begin)
            raw = fin.read(end - begin)
            fout.write(_to_f32(raw, info["dtype"]) if info["dtype"] in _FLOATS - {"F32"} else raw)


def fp32_copy(source: Path, dest: Path) -> Path:
    """`dest`: the checkpoint's configs and index as they are, every safetensors file converted to fp32."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in source.iterdir():
        if p.is_file() and p.suffix != ".safetensors" and p.suffix != ".bin":
            shutil.copy2(p, dest / p.name)
    for p in sorted(source.glob("*.safetensors")):
        convert_file(p, dest / p.name)
    return dest
