"""Kernel graphs: beside each quantized vision encoder, the same graph with its attention and FastGelu on edgevlm's
own kernels, beside each 4-bit decoder, the same graph with its products on edgevlm's MatMulQ4, and beside each fp32
part, the same graph with its products by constant matrices on MatMulF32 (edgevlm/engine/kernels.py says when the
runtimes use them).

A kernel graph holds no weights of its own: every initializer of 1 KB or more is external data pointing at the
bytes of the same tensor inside the standard file (an ONNX initializer's raw_data is stored as-is in the protobuf),
so a 98 MB int8 encoder gets a 0.6 MB companion (the 114 MB 4-bit 256M decoder a 0.12 MB one), and ONNX Runtime maps those bytes instead of parsing them (the
session opens faster and with a smaller peak than from the standard file; docs/benchmarks.md). The standard file
is untouched and stays what every other ONNX reader loads.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgevlm.engine import kernels

SUFFIX = ".kernels.onnx"
_EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inline: not worth a reference


def kernel_graph_path(standard: Path) -> Path:
    return standard.with_name(standard.name[: -len(".onnx")] + SUFFIX)


def write_kernel_graph(standard: Path, part: str = "vision_encoder", fp32: bool = False) -> Path | None:
    """Write the kernel graph of `standard` beside it; None where it would change nothing (an fp16 part, or nothing
    the kernels take). A quantized part gets its attention (vision) or 4-bit products (decoder) on the kernels, the
    fp32 variant's part (`fp32`) its products by constant matrices (MatMulF32: the same fp32 arithmetic, so the
    fp32 variant keeps PyTorch's tokens). The runtimes tell the two kinds apart by the variant, as here."""
    data = standard.read_bytes()  # parsed once, and searched for each weight's bytes
    model = onnx.load_from_string(data)
    if fp32:
        rewrite = kernels.rewrite_f32
    elif kernels.is_quantized(model):
        rewrite = kernels.rewrite_decoder if part == "decoder_model_merged" else kernels.rewrite_vision
    else:
        return None
    if not rewrite(model):
        return None
    start = 0
    for graph in kernels.graphs(model.graph):
        for tensor in graph.initializer:
            start = _point_into(tensor, data, standard.name, start)
    target = kernel_graph_path(standard)
    target.write_bytes(model.SerializeToString())
    return target


def _point_into(tensor: onnx.TensorProto, data: bytes, location: str, start: int = 0) -> int:
    """Make `tensor` external data at an occurrence of its own bytes in `data` (any occurrence: same bytes); return
    where the next search starts. The file holds the initializers in their order, so each search begins after the
    one before (the 540 MB fp32 decoder's 240 weights in seconds, not minutes) and goes back to the start only when
    that finds nothing."""
    if not tensor.HasField("raw_data") or len(tensor.raw_data) < _EXTERNAL_MIN_BYTES:
        return start
    offset = data.find(tensor.raw_data, start)
    if offset < 0:
        offset = data.find(tensor.raw_data)
    if offset < 0:  # stored in another encoding: keep it inline
        return start
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return offset + length


def write_kernel_graphs(onnx_dir: Path, variant_files: dict[str, dict[str, str]]) -> dict[str, str]:
    """Kernel graphs for the vision encoders and decoders of `variant_files`; the manifest's `kernel_graphs` table
    (standard file -> kernel graph, both relative to the bundle)."""
    table = {}
    fp32 = variant_files.get("fp32", {})
    for part in ("vision_encoder", "decoder_model_merged"):
        for rel in sorted({parts[part] for parts in variant_files.values()}):
            made = write_kernel_graph(onnx_dir.parent / rel, part, fp32=fp32.get(part) == rel)
            if made is not None:
                table[rel] = made.relative_to(onnx_dir.parent).as_posix()
    return table
