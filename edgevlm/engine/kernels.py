"""edgevlm's own kernels beside ONNX Runtime: find the custom-op library, decide whether it helps on this CPU,
and the graph rewrite that puts a vision encoder's attention on it.

A bundle's standard files stay standard ONNX (com.microsoft MultiHeadAttention), which every runtime reads. The
exporter adds, beside each quantized vision encoder, a small "kernel graph" (`vision_encoder_int8.kernels.onnx`):
the same graph with its unmasked attention on ai.edgevlm's operator, whose weights are external data pointing into
the standard file's own bytes, so nothing is stored twice. Where libedgevlm_kernels loads and its attention kernel
beats ONNX Runtime's on this CPU (AVX-512 BF16: bf16 dot products accumulated in fp32; docs/benchmarks.md), the
runtime opens the kernel graph instead. Everywhere else (no library, no compiler at install time, another CPU, the
fp32 variant, a GPU, a bundle exported before kernel graphs) nothing changes.

EDGEVLM_KERNELS=off turns the kernels off; EDGEVLM_KERNELS_LIBRARY names the library file to use.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger("edgevlm")

DOMAIN = "ai.edgevlm"
LIBRARY_NAME = "libedgevlm_kernels.so"
BF16_LEVEL = 2  # evk_attention_level: 2 = AVX-512 BF16, 1 = portable fp32 loops only
# What the bf16 kernel takes (attention_bf16.cpp): SigLIP-B's 64 (256M, 500M), so400m's 72 (2.2B), the tiny test
# models' 32.
BF16_HEAD_DIMS = (32, 64, 72)
# Only quantized encoders are rewritten: their features already differ from fp32 by more than bf16 attention adds
# (cosine 0.9991 against 0.99998 for attention alone), while the fp32 variant's promise is PyTorch's exact tokens.
QUANTIZED_OPS = {
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
    "MatMulNBits",
    "QLinearMatMul",
    "QAttention",
    "DequantizeLinear",
}


def _switched_off() -> bool:
    return os.environ.get("EDGEVLM_KERNELS", "").lower() in ("off", "0", "none")


@lru_cache(maxsize=1)
def library() -> Path | None:
    """The custom-op library: EDGEVLM_KERNELS_LIBRARY, else the one built into the package at install time."""
    if _switched_off():
        return None
    named = os.environ.get("EDGEVLM_KERNELS_LIBRARY")
    path = Path(named) if named else Path(__file__).resolve().parent.parent / "_kernels" / LIBRARY_NAME
    return path if path.is_file() else None


@lru_cache(maxsize=8)
def attention_level(head_dim: int) -> int:
    """Which attention kernel the library runs for this head size on this CPU (0: no library)."""
    lib = library()
    if lib is None:
        return 0
    try:
        fn = ctypes.CDLL(str(lib)).evk_attention_level
    except (OSError, AttributeError) as e:
        log.warning("edgevlm kernels: %s cannot be loaded (%s); using ONNX Runtime's kernels", lib, e)
        return 0
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return int(fn(head_dim))


def status() -> str:
    """One line for `edgevlm info` and benchmarks: what the kernels do here."""
    lib = library()
    if lib is None:
        return "off (EDGEVLM_KERNELS=off)" if _switched_off() else "not built"
    level = attention_level(64)
    return {BF16_LEVEL: "vision attention in bf16 (AVX-512 BF16)"}.get(
        level, "built; this CPU has no AVX-512 BF16, so ONNX Runtime's kernels run"
    )


def in_use() -> bool:
    """Whether sessions on the CPU should open kernel graphs: the library loads and this CPU runs its bf16 kernel."""
    return library() is not None and attention_level(64) == BF16_LEVEL


def is_quantized(model: Any) -> bool:
    """Whether an onnx ModelProto holds quantized operators anywhere (subgraphs included)."""
    return any(n.op_type in QUANTIZED_OPS for g in graphs(model.graph) for n in g.node)


def rewrite_attention(model: Any) -> int:
    """Put the unmasked attention nodes of an onnx ModelProto on ai.edgevlm's kernel, in place; return how many.
    The exporter calls this to write kernel graphs (it has the onnx package; the runtime never needs it)."""
    weights = {t.name: t for t in model.graph.initializer}
    changed = sum(_rewrite(g, weights) for g in graphs(model.graph))
    if changed and not any(o.domain == DOMAIN for o in model.opset_import):
        op = model.opset_import.add()
        op.domain, op.version = DOMAIN, 1
    return changed


def graphs(graph: Any):
    """A graph and every subgraph inside it (the vision encoder's attention sits in an If's branch)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.g.node:
                yield from graphs(attr.g)
            for g in attr.graphs:
                yield from graphs(g)


def _rewrite(graph: Any, weights: dict) -> int:
    count = 0
    for node in graph.node:
        if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft":
            continue
        attrs = {a.name: a for a in node.attribute}
        causal = "unidirectional" in attrs and attrs["unidirectional"].i
        if (
            set(attrs) - {"num_heads", "scale", "unidirectional"}
            or causal
            or len(node.input) != 4
            or node.input[3] not in weights
        ):
            continue  # a mask, causal, another attribute, or no bias to read the size from: ONNX Runtime's kernel
        bias = weights[node.input[3]]
        if bias.data_type != 1 or len(bias.dims) != 1:  # TensorProto.FLOAT: the kernel takes fp32 activations
            continue
        hidden, heads = int(bias.dims[0]) // 3, attrs["num_heads"].i
        if not hidden or hidden % heads or hidden // heads not in BF16_HEAD_DIMS:
            continue  # a head size the bf16 kernel does not take: ONNX Runtime's kernel
        node.domain = DOMAIN
        count += 1
    return count
