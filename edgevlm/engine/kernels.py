"""edgevlm's own kernels beside ONNX Runtime: find the custom-op library, decide whether it helps on this CPU,
and the graph rewrites that put a vision encoder's attention and a 4-bit decoder's products on it.

A bundle's standard files stay standard ONNX (com.microsoft MultiHeadAttention), which every runtime reads. The
exporter adds, beside each quantized vision encoder, a small "kernel graph" (`vision_encoder_int8.kernels.onnx`):
the same graph with its unmasked attention and its FastGelu activations on ai.edgevlm's operators (a kernel graph
exported before FastGelu's keeps ONNX Runtime's there), whose weights are external data pointing into
the standard file's own bytes, so nothing is stored twice. Where libedgevlm_kernels loads and its attention kernel
beats ONNX Runtime's on this CPU (AMX or AVX-512 BF16: bf16 products accumulated in fp32; docs/benchmarks.md), the
runtime opens the kernel graph instead. Everywhere else (no library, no compiler at install time, another CPU, the
fp32 variant, a GPU, a bundle exported before kernel graphs) nothing changes.

The 4-bit decoder's kernel graph (MatMulQ4: one node per product instead of eight) decodes ~1.2x faster, opens
faster and holds ~50 MB less. Its prompts (prefill) run in bf16 where the CPU has AVX-512 BF16: on AMX tiles
2-2.7x faster than ONNX Runtime's, with vdpbf16ps 1.3-1.5x faster (docs/benchmarks.md); with AVX-512 VNNI alone
they stay on int8 and are ~1.3x slower, which makes a long prompt (a split image: 1,100 tokens) slower end to end.
On CPUs without AVX-512 its AVX2 build decodes 1.4-1.6x faster and prefills in 0.93-0.96x the time. So it is
the default where the CPU has AVX-512 BF16 or AVX2 without AVX-512, and elsewhere runs only when asked for. The same
kernel graph puts the decoder's attention (GroupQueryAttention, its KV cache in place) on the library's fp32 kernel, 2-4x
faster than ONNX Runtime's per token.

The fp32 variant's kernel graphs (vision encoder and decoder) put every product by a constant matrix on MatMulF32:
the same fp32 arithmetic (PyTorch's tokens, checked by the export), but W is read where the file keeps it instead
of ONNX Runtime copying it into MLAS's packed layout when the session opens, which was nearly all of a 2.2B fp32
load() (docs/benchmarks.md). It is used where its AVX-512 build runs (measured against MLAS there); its portable
build (AVX2, ARM) only with EDGEVLM_KERNELS=all.

EDGEVLM_KERNELS: unset or `auto` (the vision attention and the 4-bit decoder where the CPU has AVX-512 BF16, faster
on every workload measured on this CPU class, and the 4-bit decoder where it has AVX2 and no AVX-512; MatMulF32 with
AVX-512, which loads much faster and runs ~6 % slower),
`all` (also the 4-bit decoder on VNNI alone, and MatMulF32's portable build), `off`, or the caps for tests and
comparisons, `avx512` (no AMX), `vnni` (AVX-512 VNNI's integer products: no bf16 kernel, as on a CPU without
AVX-512 BF16), `avx2` (the AVX2 builds, as on a CPU without AVX-512) and `portable`; EDGEVLM_KERNELS_LIBRARY names
the library file to use.
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("edgevlm")

DOMAIN = "ai.edgevlm"
LIBRARY_NAME = "libedgevlm_kernels.so"
BF16_LEVEL = 2  # evk_attention_level: 3 = AMX tiles, 2 = AVX-512 BF16, 1 = portable fp32 loops only
AMX_LEVEL = 3
AVX512_F32_LEVEL = 2  # evk_matmul_f32_level: 2 = AVX-512, 1 = portable loops only
PORTABLE_LEVEL = 1  # every evk_*_level: the portable loops only
VNNI_LEVEL = 2  # evk_matmul_q4_level: 2 = AVX-512 VNNI, 1 = portable loops only
BF16_PROMPT_LEVEL = 4  # evk_matmul_q4_level: prompts on AVX-512 BF16 (no AMX), single rows on AVX-512 VNNI
AVX2_Q4_LEVEL = 5  # evk_matmul_q4_level: AVX2 (no AVX-512), prompts and single rows
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


def _all_asked() -> bool:
    return os.environ.get("EDGEVLM_KERNELS", "").lower() == "all"


@lru_cache(maxsize=1)
def library() -> Path | None:
    """The custom-op library: EDGEVLM_KERNELS_LIBRARY, else the one built into the package at install time."""
    if _switched_off():
        return None
    named = os.environ.get("EDGEVLM_KERNELS_LIBRARY")
    path = Path(named) if named else Path(__file__).resolve().parent.parent / "_kernels" / LIBRARY_NAME
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _loaded() -> ctypes.CDLL | None:
    lib = library()
    if lib is None:
        return None
    try:
        return ctypes.CDLL(str(lib))
    except OSError as e:
        log.warning("edgevlm kernels: %s cannot be loaded (%s); using ONNX Runtime's kernels", lib, e)
        return None


def _level(symbol: str, arg: int) -> int:
    loaded = _loaded()
    fn = getattr(loaded, symbol, None) if loaded is not None else None
    if fn is None:
        return 0
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return int(fn(arg))


@lru_cache(maxsize=8)
def attention_level(head_dim: int) -> int:
    """Which attention kernel the library runs for this head size on this CPU (0: no library)."""
    return _level("evk_attention_level", head_dim)


def matmul_q4_level() -> int:
    """Which 4-bit product the library runs on this CPU (0: no library, 1: portable, 2: AVX-512 VNNI, 3: AMX tiles
    for prompts and AVX-512 VNNI for one row, 4: AVX-512 BF16 for prompts and AVX-512 VNNI for one row, 5: AVX2);
    read each time, as the library reads EDGEVLM_KERNELS's cap at each call."""
    return _level("evk_matmul_q4_level", 64)


def matmul_f32_level() -> int:
    """Which build MatMulF32 runs on this CPU (0: no library, 1: portable loops, 2: AVX-512); read each time, as
    the library reads EDGEVLM_KERNELS's cap at each call."""
    loaded = _loaded()
    fn = getattr(loaded, "evk_matmul_f32_level", None) if loaded is not None else None
    if fn is None:
        return 0
    fn.argtypes, fn.restype = [], ctypes.c_int
    return int(fn())


def resize(pixels: np.ndarray, first: tuple[int, int], then: tuple[int, int] | None, threads: int) -> np.ndarray | None:
    """The library's LANCZOS resize of (height, width, channels) uint8 pixels to `first` (width, height), then to
    `then` where given: Pillow's bytes from the C library's resampler (vector kernels; the two resizes fused where
    SmolVLM2's rule upscales then downscales). None where the library is absent or refuses the sizes."""
    loaded = _loaded()
    fn = getattr(loaded, "evk_resize", None) if loaded is not None else None
    if fn is None or pixels.dtype != np.uint8 or pixels.ndim != 3:
        return None
    fn.restype = ctypes.c_int
    src = np.ascontiguousarray(pixels)
    h, w, c = src.shape
    w2, h2 = then or (0, 0)
    out = np.empty(((h2, w2) if then else first[::-1]) + (c,), np.uint8)
    as_bytes = ctypes.POINTER(ctypes.c_uint8)
    args = (*first, w2, h2, max(threads, 1))
    status = fn(src.ctypes.data_as(as_bytes), w, h, c, *args, out.ctypes.data_as(as_bytes))
    return out if status == 0 else None


def _decoder_faster(level: int) -> bool:
    """Whether the 4-bit decoder's kernel graph is the default at this evk_matmul_q4_level: bf16 prompts, or AVX2
    where the CPU has no AVX-512 (measured only there; with AVX-512 F but no VNNI, MLAS has wider kernels); VNNI
    alone or AVX2 beside AVX-512 only with EDGEVLM_KERNELS=all."""
    if level in (AMX_LEVEL, BF16_PROMPT_LEVEL):
        return True
    if level == AVX2_Q4_LEVEL and matmul_f32_level() < AVX512_F32_LEVEL:
        return True
    return _all_asked() and level in (VNNI_LEVEL, AVX2_Q4_LEVEL)


# part -> (whether this CPU runs its kernel better than ONNX Runtime does, what `Engine.kernels` says)
_PARTS = {
    "vision_encoder": (lambda: attention_level(64) >= BF16_LEVEL, "attention:bf16"),
    "decoder_model_merged": (lambda: _decoder_faster(matmul_q4_level()), "matmul_q4:vnni"),
}


# fp32 parts whose products go on MatMulF32 (their kernel graphs: export/kernel_graphs.py).
_F32_PARTS = ("vision_encoder", "decoder_model_merged")


def in_use(part: str, *, fp32: bool = False) -> bool:
    """Whether a CPU session of `part` should open its kernel graph: the library loads and its kernels for that
    graph beat ONNX Runtime's on this CPU. A quantized part's (`fp32` False): AMX or AVX-512 BF16 for the vision
    attention and the decoder, for the decoder also AVX-512 VNNI with EDGEVLM_KERNELS=all. An fp32 part's
    (MatMulF32): AVX-512, where it was measured against MLAS; elsewhere (AVX2, ARM: its portable loops) only with
    EDGEVLM_KERNELS=all."""
    if library() is None:
        return False
    if fp32:
        return part in _F32_PARTS and (matmul_f32_level() >= AVX512_F32_LEVEL or _all_asked())
    return part in _PARTS and _PARTS[part][0]()


def label(part: str, *, fp32: bool = False) -> str:
    """What of edgevlm's kernels `part` runs when it opens its kernel graph."""
    if fp32:
        return "matmul_f32"
    if part == "decoder_model_merged" and matmul_q4_level() == AVX2_Q4_LEVEL:
        return "matmul_q4:avx2"
    return _PARTS[part][1]


def status() -> str:
    """One line for `edgevlm info` and benchmarks: what the kernels do here."""
    lib = library()
    if lib is None:
        return "off (EDGEVLM_KERNELS=off)" if _switched_off() else "not built"
    said = {
        "vision_encoder": "vision attention in bf16 ("
        + ("AMX" if attention_level(64) == AMX_LEVEL else "AVX-512 BF16")
        + ")",
        "decoder_model_merged": "the 4-bit decoder's products ("
        + {
            AMX_LEVEL: "AMX for prompts, AVX-512 VNNI per token",
            BF16_PROMPT_LEVEL: "AVX-512 BF16 for prompts, AVX-512 VNNI per token",
            AVX2_Q4_LEVEL: "AVX2",
        }.get(matmul_q4_level(), "AVX-512 VNNI")
        + ")",
    }
    used = [what for part, what in said.items() if in_use(part)]
    if in_use("decoder_model_merged", fp32=True):
        used.append("the fp32 variant's products (MatMulF32, weights read in place)")
    if not used:
        return "built; none of its kernels is faster on this CPU, so ONNX Runtime's run"
    return "; ".join(used)


def is_quantized(model: Any) -> bool:
    """Whether an onnx ModelProto holds quantized operators anywhere (subgraphs included)."""
    return any(n.op_type in QUANTIZED_OPS for g in graphs(model.graph) for n in g.node)


def rewrite_vision(model: Any) -> int:
    """Put the unmasked attention nodes and the FastGelu activations of an onnx ModelProto on ai.edgevlm's kernels,
    in place; return how many. The exporter calls this to write kernel graphs (it has the onnx package; the runtime
    never needs it)."""
    weights = {t.name: t for t in model.graph.initializer}
    changed = sum(_rewrite(g, weights) + _rewrite_gelu(g) for g in graphs(model.graph))
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


def _rewrite_gelu(graph: Any) -> int:
    """com.microsoft FastGelu (x, bias?) -> ai.edgevlm's, the same inputs: ONNX Runtime's ran compute-bound at 2.4x
    the time of ours (fast_gelu.hpp)."""
    count = 0
    for node in graph.node:
        if (
            node.op_type == "FastGelu"
            and node.domain == "com.microsoft"
            and not node.attribute
            and len(node.input) <= 2
        ):
            node.domain = DOMAIN
            count += 1
    return count


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


def rewrite_decoder(model: Any) -> int:
    """Put the 4-bit decoder's products on ai.edgevlm's MatMulQ4, in place; return how many.

    Each MatMulNBits whose HQQ float zero points were moved into a correction term (export/zero_point_correction.py:
    MatMulNBits -> `<out>_int_zp`, MatMul(block sums, correction) -> `<out>_zp_term`, Add -> out) becomes one node
    reading the same codes, scales and correction; where its output feeds the MLP's Split -> silu(gate) * up, that
    goes into the node too (silu_mul). The block sums that nothing reads any more are removed. Eight nodes of
    ONNX Runtime per product become one, about 20 fewer per layer: the 256M decoder ran ~820 nodes per token.
    Its attention goes on ai.edgevlm's GroupQueryAttention too (_gqa): ONNX Runtime's CPU kernel was 36 % of a
    long prompt's prefill and 15-22 us a layer of each token (docs/benchmarks.md).
    """
    from onnx import helper

    graph, count = model.graph, 0
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop: set[int] = set()
    for node in list(graph.node):
        fused = _matmul_q4(node, producer, consumers)
        if fused is None:
            continue
        q4, removed = fused
        silu = _silu_mul(q4.output[0], producer, consumers)
        if silu is not None:
            q4.output[0] = silu[0]
            removed += silu[1]
            q4.attribute.append(helper.make_attribute("silu_mul", 1))
        drop.update(id(n) for n in removed)
        graph.node.insert(list(graph.node).index(node), q4)
        count += 1
    if not count:
        return 0
    for node in graph.node:
        _gqa(node)
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(_without_dead_nodes(kept, {o.name for o in graph.output}))
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        op = model.opset_import.add()
        op.domain, op.version = DOMAIN, 1
    return count


def rewrite_f32(model: Any) -> int:
    """Put an fp32 graph's products by a constant matrix (MatMul(x, W) with W an fp32 (K, N) initializer) on
    ai.edgevlm's MatMulF32, in place; return how many. ONNX Runtime copies every such W into MLAS's packed layout
    when a session opens (12-17 s of the 2.2B fp32 load()); MatMulF32 reads W where the file keeps it
    (cpp_bindings/kernels/matmul_f32.hpp)."""
    weights = {t.name: t for t in model.graph.initializer}
    count = 0
    for graph in graphs(model.graph):
        for node in graph.node:
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in weights:
                continue
            w = weights[node.input[1]]
            if w.data_type != 1 or len(w.dims) != 2:  # TensorProto.FLOAT, a matrix
                continue
            node.op_type, node.domain = "MatMulF32", DOMAIN
            count += 1
    if count and not any(o.domain == DOMAIN for o in model.opset_import):
        op = model.opset_import.add()
        op.domain, op.version = DOMAIN, 1
    return count


def _attrs(node: Any) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _matmul_q4(node: Any, producer: dict, consumers: dict) -> tuple[Any, list] | None:
    """The MatMulQ4 node for a corrected 4-bit MatMulNBits, and the nodes it replaces; None if `node` is not one."""
    from onnx import helper

    if node.op_type != "MatMulNBits" or len(node.input) != 3 or not node.output[0].endswith("_int_zp"):
        return None
    a = _attrs(node)
    if a.get("bits") != 4 or a.get("block_size") != 32 or a["K"] % 64:
        return None
    out = node.output[0][: -len("_int_zp")]
    term, add = producer.get(out + "_zp_term"), producer.get(out)
    if term is None or add is None or term.op_type != "MatMul" or add.op_type != "Add":
        return None
    q4 = helper.make_node(
        "MatMulQ4",
        [node.input[0], node.input[1], node.input[2], term.input[1]],
        [out],
        name=node.name + "_q4",
        domain=DOMAIN,
        K=a["K"],
        N=a["N"],
    )
    return q4, [node, term, add]


# What ai.edgevlm's GroupQueryAttention reads; any other attribute set to something else keeps ONNX Runtime's.
_GQA_ATTRIBUTES = {"num_heads", "kv_num_heads", "scale", "do_rotary"}
_GQA_NEUTRAL = {
    "rotary_interleaved": 0,
    "local_window_size": -1,
    "softcap": 0.0,
    "smooth_softmax": -1,
    "qk_output": 0,
    "k_quant_type": b"NONE",
    "v_quant_type": b"NONE",
    "sliding_window_cache": 0,
    "qk_norm_epsilon": None,  # (only read with the q/k norm inputs, which the rewrite refuses)
    "causal": 1,
}


def _gqa(node: Any) -> bool:
    """Move a com.microsoft GroupQueryAttention with packed QKV and nothing beyond the half-split rotary to
    ai.edgevlm's kernel (cpp_bindings/kernels/gqa.hpp), in place; whether it did."""
    if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft":
        return False
    inputs = list(node.input)
    if len(inputs) < 7 or len(inputs) > 9 or inputs[1] or inputs[2]:
        return False  # separate key and value, or the q/k norm and quantized-cache inputs
    attrs = _attrs(node)
    for name, value in attrs.items():
        if name in _GQA_ATTRIBUTES:
            continue
        if name not in _GQA_NEUTRAL:
            return False
        neutral = _GQA_NEUTRAL[name]
        if neutral is not None and value != neutral and not (name == "smooth_softmax" and value == 0):
            return False
    kept = [a for a in node.attribute if a.name in _GQA_ATTRIBUTES]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.domain = DOMAIN
    return True


def _silu_mul(out: str, producer: dict, consumers: dict) -> tuple[str, list] | None:
    """(the product's name, the nodes it replaces) where `out` feeds only Split(2 halves) -> silu(gate) * up."""
    users = consumers.get(out, [])
    if len(users) != 1 or users[0].op_type != "Split" or len(users[0].output) != 2:
        return None
    split = users[0]
    gate, up = split.output
    sig = [n for n in consumers.get(gate, []) if n.op_type == "Sigmoid"]
    silu = [n for n in consumers.get(gate, []) if n.op_type == "Mul"]
    if len(consumers.get(gate, [])) != 2 or len(sig) != 1 or len(silu) != 1:
        return None
    if set(silu[0].input) != {gate, sig[0].output[0]} or len(consumers.get(up, [])) != 1:
        return None
    prod = consumers[up][0]
    if prod.op_type != "Mul" or set(prod.input) != {silu[0].output[0], up}:
        return None
    if len(consumers.get(silu[0].output[0], [])) != 1 or len(consumers.get(sig[0].output[0], [])) != 1:
        return None
    return prod.output[0], [split, sig[0], silu[0], prod]


def _without_dead_nodes(nodes: list, outputs: set[str]) -> list:
    """Nodes whose outputs something still reads (the block sums of the corrections, once those are fused)."""
    while True:
        read = outputs | {i for n in nodes for i in n.input}
        alive = [n for n in nodes if any(o in read for o in n.output if o)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive
