"""Float zero points on ONNX Runtime's fast 4-bit kernel, exactly.

HQQ (and llama.cpp's Q4_1) store a block of weights as w = s * (q - z) with a *float* offset z. That is what keeps
4-bit accurate on SmolLM2 (far above integer grids' top-1 agreement; docs/benchmarks.md), but MatMulNBits with
float zero points runs on a slow reference path (a few tokens per second). Split the weight instead:

    w = s * (q - 8) + s * (8 - z)
        '-- fast path --'  '-- c: one number per block and output column --'

The first term is MatMulNBits with its default integer zero point (MLAS's int8-compute kernel, accuracy_level 4);
the second is sum_block(x) @ C, where sum_block adds the 32 inputs of each block: a (K/32 x N) fp32 MatMul, 1/32
of the weight's work. The 4-bit codes are unchanged, so the result equals the float-zero-point product up to
rounding (tested in tests/test_export.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def correct_float_zero_points(model: onnx.ModelProto, accuracy_level: int = 4) -> int:
    """Rewrite every MatMulNBits with float zero points as above (in place); returns how many were rewritten."""
    g = model.graph
    init = {i.name: i for i in g.initializer}
    nodes, block_sums, count = [], {}, 0
    for node in g.node:
        nodes.append(node)
        zp = init.get(node.input[3]) if node.op_type == "MatMulNBits" and len(node.input) > 3 else None
        if zp is None or zp.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        k, n, bits, bs = (_attr(node, a) for a in ("K", "N", "bits", "block_size"))
        if k % bs:
            continue  # a ragged last block would need its own sum; not produced by our exports
        nb = k // bs
        z = numpy_helper.to_array(zp).astype(np.float32).reshape(n, nb)
        s = numpy_helper.to_array(init[node.input[2]]).astype(np.float32).reshape(n, nb)
        corr = node.input[1] + "_zp_correction"
        g.initializer.append(numpy_helper.from_array((s * (2 ** (bits - 1) - z)).T.copy(), corr))
        x = node.input[0]
        if (x, bs) not in block_sums:
            block_sums[(x, bs)] = _block_sum(g, nodes, x, nb, bs)
        out = node.output[0]
        node.output[0] = out + "_int_zp"
        del node.input[3:]
        set_attr(node, "accuracy_level", accuracy_level)
        nodes.append(
            helper.make_node("MatMul", [block_sums[(x, bs)], corr], [out + "_zp_term"], name=node.name + "_zp_term")
        )
        nodes.append(helper.make_node("Add", [out + "_int_zp", out + "_zp_term"], [out], name=node.name + "_zp_add"))
        count += 1
    used = {i for nd in nodes for i in nd.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.node[:]
    g.node.extend(_topological(nodes, {i.name for i in g.input} | {i.name for i in kept}))
    return count


def _block_sum(g: onnx.GraphProto, nodes: list, x: str, nb: int, bs: int) -> str:
    """x (batch, seq, K) -> (batch, seq, K/bs): the sum of each block of bs inputs."""
    shape, axes, r, out = x + "_blocks_shape", x + "_blocks_axes", x + "_blocks", x + "_block_sum"
    g.initializer.append(numpy_helper.from_array(np.array([0, 0, nb, bs], np.int64), shape))
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axes))
    nodes.append(helper.make_node("Reshape", [x, shape], [r], name=r))
    nodes.append(helper.make_node("ReduceSum", [r, axes], [out], name=out, keepdims=0))
    return out


def _topological(nodes: list, available: set[str]) -> list:
    """Order nodes so every input is produced first (the block sums were appended after their first consumer)."""
    ready, ordered, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for nd in pending:
            if all(i in ready for i in nd.input):
                ordered.append(nd)
                ready.update(nd.output)
            else:
                rest.append(nd)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph has a node whose inputs never appear: {rest[0].name}")
        pending = rest
    return ordered
