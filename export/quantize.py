"""Quantized variants of the fp32 parts: fp16, int8 (dynamic, per-channel weights), q4 (MatMulNBits).

Each function writes one file and returns the op counts that prove quantization happened (a quantizer that
matches nothing leaves a file the same size as fp32: see shared/reference/anchors.md).
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx


def op_counts(path: Path) -> dict[str, int]:
    return dict(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node))


def _save(model: onnx.ModelProto, path: Path) -> None:
    large = model.ByteSize() > (1 << 30) if hasattr(model, "ByteSize") else False
    if large:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + "_data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def basic_optimized(src: Path, dst: Path) -> Path:
    """ONNX Runtime's basic (provider-independent) optimizations, saved: folds the weight Transposes that
    would otherwise hide MatMul weights from the quantizers."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


def to_fp16(src: Path, dst: Path) -> dict[str, int]:
    """fp16 weights and compute, fp32 inputs/outputs (so the runtime feeds every variant the same way)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    _save(converted, dst)
    return op_counts(dst)


def to_int8(src: Path, dst: Path, gather: bool = False) -> dict[str, int]:
    """Dynamic int8: weights int8 per channel, activations quantized at run time (MatMulInteger / VNNI)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        opt = basic_optimized(src, Path(tmp) / "basic.onnx")
        ops = ["MatMul", "Gather"] if gather else ["MatMul"]
        quantize_dynamic(str(opt), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=ops, extra_options={"MatMulConstBOnly": True})
    return op_counts(dst)


def to_q4(src: Path, dst: Path, block_size: int = 32, accuracy_level: int = 4) -> dict[str, int]:
    """4-bit weights, MatMulNBits (accuracy_level 4: int8 compute on the activations)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with tempfile.TemporaryDirectory() as tmp:
        opt = basic_optimized(src, Path(tmp) / "basic.onnx")
        model = onnx.load(str(opt))
        q = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level)
        q.process()
        _save(q.model.model, dst)
    return op_counts(dst)


def file_size(path: Path) -> int:
    data = path.with_name(path.name + "_data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)



