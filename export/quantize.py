"""Quantized variants of the fp32 parts: fp16, int8 (dynamic, per-channel weights), q4 (MatMulNBits).

Each function writes one file and returns the op counts that prove quantization happened (a quantizer that
matches nothing leaves a file the same size as fp32: see shared/reference/anchors.md).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from pathlib import Path

import onnx

from edgevlm.engine.bundle_format import EXTERNAL_DATA_LIMIT, external_data

from .external_weights import ExternalWeights


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizers log INFO per node and a generic 'run pre-processing' warning on the root logger."""
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # HQQ's torch.from_numpy on a read-only array
            yield
    finally:
        root.setLevel(level)


def op_counts(path: Path) -> dict[str, int]:
    """Node counts by op type, the nodes inside If branches included."""

    def nodes(graph: onnx.GraphProto):
        for n in graph.node:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(a.g)

    return dict(Counter(n.op_type for n in nodes(onnx.load(str(path), load_external_data=False).graph)))


def _weight_bytes(model: onnx.ModelProto) -> int:
    """The initializers' size; protobuf's ByteSize() itself fails on a model over 2 GB."""
    return sum(t.ByteSize() for t in model.graph.initializer)


def save_part(model: onnx.ModelProto, path: Path) -> None:
    if _weight_bytes(model) > EXTERNAL_DATA_LIMIT:  # protobuf cannot serialise 2 GB: weights go to <name>.onnx_data
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external_data(path).name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def basic_optimized(src: Path, dst: Path) -> Path:
    """ONNX Runtime's basic (provider-independent) optimizations, saved: folds the weight Transposes that
    would otherwise hide MatMul weights from the quantizers."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    if external_data(src).exists():
        # A graph whose weights live beside it (500M and 2.2B decoders): the optimized copy gets its own weights
        # file. Without this ONNX Runtime writes references to the source's `_data` file, relative to `dst`,
        # where it does not exist.
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", external_data(dst).name)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


def to_fp16(src: Path, dst: Path) -> dict[str, int]:
    """fp16 weights and compute, fp32 inputs/outputs (so the runtime feeds every variant the same way).

    A graph with external weights (500M, 2.2B decoders) has its weights converted one tensor at a time, read
    from the fp32 file and written to the fp16 one, before the converter sees the graph: loading the 2.2B
    decoder whole to convert it peaked at 15 GB."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    if not external_data(src).exists():
        save_part(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=True), dst)
        return op_counts(dst)
    model = onnx.load(str(src), load_external_data=False)
    with ExternalWeights(external_data(dst)) as weights:
        _initializers_to_fp16(model, src.parent, weights)
    # The large weights are in external_data(dst) already: the graph is saved as it is.
    onnx.save_model(convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True), str(dst))
    return op_counts(dst)


def _initializers_to_fp16(model: onnx.ModelProto, src_dir: Path, weights: ExternalWeights) -> None:
    """Every float initializer becomes float16 (clipped as the converter clips); external ones are read from
    `src_dir` and appended to `weights`, so only one tensor is in memory at a time."""
    import numpy as np
    from onnx import TensorProto, numpy_helper
    from onnxruntime.transformers.float16 import convert_np_to_float16

    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT:
            continue
        if t.data_location != TensorProto.EXTERNAL:
            t.CopyFrom(numpy_helper.from_array(convert_np_to_float16(numpy_helper.to_array(t)), t.name))
            continue
        info = {e.key: e.value for e in t.external_data}
        with open(src_dir / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(int(info["length"]))
        half = convert_np_to_float16(np.frombuffer(raw, dtype=np.float32)).astype(np.float16)
        t.CopyFrom(weights.add(t.name, half.reshape(tuple(t.dims))))


def _nbits(
    model: onnx.ModelProto,
    bits: int,
    accuracy_level: int,
    exclude: list[str] | None = None,
    gather: bool = False,
    algo=None,
    block_size: int = 32,
) -> onnx.ModelProto:
    """MatMulNBits (or GatherBlockQuantized with `gather`) at `bits`; HQQ when `algo` is given."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if algo is not None:
        q = MatMulNBitsQuantizer(model, algo_config=algo, nodes_to_exclude=exclude or [])
    else:
        extra = {"op_types_to_quantize": ("Gather",), "quant_axes": (("Gather", 1),)} if gather else {}
        q = MatMulNBitsQuantizer(
            model,
            bits=bits,
            block_size=block_size,
            is_symmetric=True,
            accuracy_level=accuracy_level,
            nodes_to_exclude=exclude or [],
            **extra,
        )
    with _quiet():
        q.process()
    return q.model.model


def _lm_head(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.name]


def to_int8(src: Path, dst: Path, part: str) -> dict[str, int]:
    """int8 weights, chosen per part by measurement (docs/benchmarks.md):

    - decoder: weight-only 8-bit blocks of 16 (MatMulNBits) at accuracy_level 4, i.e. int8 compute with the
      activations quantized per block of 16, and the lm_head left fp32: 68 tok/s decode at 97.05 % top-1 agreement
      (level 0 kept 97.7 % at 2.6 tok/s; blocks of 32 at level 4 lost 0.6 points; docs/benchmarks.md). Dynamic
      int8 quantizes activations per tensor, and SmolLM2's activation outliers then destroy it (0 %).
    - token embeddings: int8 rows (GatherBlockQuantized supports 4 bits only).
    - vision encoder: dynamic int8 (MatMulInteger, VNNI), 2.3x faster per tile than fp32 here.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        opt = basic_optimized(src, Path(tmp) / "basic.onnx")
        if part == "decoder_model_merged":
            model = onnx.load(str(opt))
            save_part(_nbits(model, 8, 4, exclude=_lm_head(model), block_size=16), dst)
        else:
            ops = ["Gather"] if part == "embed_tokens" else ["MatMul"]
            with _quiet():
                quantize_dynamic(
                    str(opt),
                    str(dst),
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    op_types_to_quantize=ops,
                    extra_options={"MatMulConstBOnly": True},
                )
    return op_counts(dst)


def to_q4(src: Path, dst: Path, part: str) -> dict[str, int]:
    """4-bit weights (block 32), per part:

    - decoder: HQQ (a scale/zero search, needs torch at export time) for every MatMul but the lm_head, which
      stays 8-bit: on the trained SmolLM2 decoder that keeps top-1 agreement with fp32 in the mid-90s, where
      plain round-to-nearest 4-bit kept 60-70 %. HQQ's float zero points are then moved off ONNX Runtime's slow
      path by zero_point_correction, and everything runs at accuracy_level 4 (int8 compute, activations
      quantized per block of 32, which SmolLM2's outliers survive). Figures: docs/benchmarks.md.
    - token embeddings: GatherBlockQuantized 4-bit. vision: round-to-nearest 4-bit, int8 compute.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig

    from .zero_point_correction import correct_float_zero_points, set_attr

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(basic_optimized(src, Path(tmp) / "basic.onnx")))
        if part == "decoder_model_merged":
            head = _lm_head(model)
            model = _nbits(model, 4, 0, exclude=head, algo=HQQWeightOnlyQuantConfig(block_size=32, bits=4))
            model = _nbits(model, 8, 4)  # what is left: the lm_head
            correct_float_zero_points(model, accuracy_level=4)
            for node in model.graph.node:
                if node.op_type == "MatMulNBits":
                    set_attr(node, "accuracy_level", 4)
        else:
            model = _nbits(model, 4, 4, gather=part == "embed_tokens")
        save_part(model, dst)
    return op_counts(dst)


def file_size(path: Path) -> int:
    data = external_data(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
