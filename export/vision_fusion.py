"""Fused attention and GELU in the traced vision encoder, so every variant runs ONNX Runtime's fused kernels.

The trace of SmolVLM2's SigLIP encoder spells each layer's attention out as 15 nodes (reshapes, transposes,
Q·Kᵀ, scale, mask add, softmax, ·V) and its tanh GELU as 9 elementwise nodes. ONNX Runtime's own transformer
optimizer fuses the GELU but finds no attention in this trace, and at run time its graph optimizer
fuses neither. Here both are rewritten from the trace's known shape:

- attention -> com.microsoft MultiHeadAttention(query, key, value, bias = the three projection biases packed,
  key_padding_mask = the trace's patch mask), with the trace's own scale, inside an If on "every patch is
  real": ONNX Runtime's CPU kernel takes its flash-attention path only without a mask (12 layers 142 -> 107 ms
  per 512 px tile), and a full tile, which is every tile the runtimes feed, needs none; a padded tile takes the
  masked kernel, the same computation as before;
- 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) after fc1 -> com.microsoft FastGelu(fc1's MatMul, fc1's bias).

Every match is checked node by node; a layer that does not match is left as traced (and counted), so a future
transformers whose trace differs costs speed, never correctness. The export verifies every variant against
PyTorch afterwards as before.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .quantize import save_part

MS_DOMAIN = "com.microsoft"
_GELU_CONSTANTS = (0.5, 1.0, 0.044715, float(np.sqrt(2 / np.pi)))  # gelu_pytorch_tanh's


class _Graph:
    """Producer and consumer lookups over one graph, and the set of nodes a rewrite removes."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.inits = {t.name: t for t in self.graph.initializer}
        self.removed: set[int] = set()
        self.made: dict[str, list[onnx.NodeProto]] = {}  # nodes a rewrite adds, keyed by what they compute

    def parent(self, node: onnx.NodeProto, index: int, op: str) -> onnx.NodeProto | None:
        if index >= len(node.input):
            return None
        p = self.producer.get(node.input[index])
        return p if p is not None and p.op_type == op else None

    def only_child(self, node: onnx.NodeProto, op: str) -> onnx.NodeProto | None:
        users = self.consumers.get(node.output[0], [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def const(self, name: str) -> np.ndarray | None:
        """The value of a weight or constant (through the Identity nodes the exporter writes for weights that
        are equal, as a random checkpoint's zero biases are), else None."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(p.attribute[0].t)
        if p is not None and p.op_type == "Identity":
            return self.const(p.input[0])
        return None


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None:
        return None
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _projection(g: _Graph, node: onnx.NodeProto | None, perm: list[int]):
    """Transpose(perm) <- Reshape <- Add(bias initializer, MatMul): the projection's MatMul output and bias."""
    if node is None or _perm(node) != perm:
        return None
    reshape = g.parent(node, 0, "Reshape")
    add = reshape and g.parent(reshape, 0, "Add")
    if add is None:
        return None
    for b, m in ((0, 1), (1, 0)):
        matmul = g.parent(add, m, "MatMul")
        if matmul is not None and (bias := g.const(add.input[b])) is not None and bias.ndim == 1:
            return matmul.output[0], bias, [node, reshape, add]
    return None


def _fuse_attention(g: _Graph, softmax: onnx.NodeProto, num_heads: int) -> onnx.NodeProto | None:
    add_mask = g.parent(softmax, 0, "Add")
    mul = add_mask and g.parent(add_mask, 0, "Mul")
    qk = mul and g.parent(mul, 0, "MatMul")
    scale = mul is not None and g.const(mul.input[1])
    if qk is None or scale is None or np.size(scale) != 1:
        return None
    q = _projection(g, g.parent(qk, 0, "Transpose"), [0, 2, 1, 3])
    k = _projection(g, g.parent(qk, 1, "Transpose"), [0, 2, 3, 1])
    after, casts = softmax, []
    while (cast := g.only_child(after, "Cast")) is not None:  # the trace's no-op float32 round trips
        casts.append(cast)
        after = cast
    users = g.consumers.get(after.output[0], [])
    pv = users[0] if len(users) == 1 and users[0].op_type == "MatMul" and users[0].input[0] == after.output[0] else None
    v = pv and _projection(g, g.parent(pv, 1, "Transpose"), [0, 2, 1, 3])
    back = pv and g.only_child(pv, "Transpose")
    merge = back and _perm(back) == [0, 2, 1, 3] and g.only_child(back, "Reshape")
    if not (q and k and v and merge):
        return None
    bias_name = qk.name.rsplit("/", 1)[0] + "/qkv_bias"
    bias = np.concatenate([q[1], k[1], v[1]]).astype(np.float32)
    g.graph.initializer.append(numpy_helper.from_array(bias, bias_name))
    for n in (*q[2], *k[2], *v[2], qk, mul, add_mask, softmax, *casts, pv, back, merge):
        g.removed.add(id(n))
    return helper.make_node(
        "MultiHeadAttention",
        [q[0], k[0], v[0], bias_name, _key_padding_mask(g, add_mask.input[1])],
        [merge.output[0]],
        name=softmax.name.rsplit("/", 1)[0] + "/MultiHeadAttention",
        domain=MS_DOMAIN,
        num_heads=num_heads,
        scale=float(np.asarray(scale).reshape(())),
    )


def _key_padding_mask(g: _Graph, additive: str) -> str:
    """The trace's additive mask (tiles, 1, 1, patches; 0 where a patch is real) as MultiHeadAttention's
    key_padding_mask (tiles, patches; 1 where real), made once and shared by every layer."""
    name = additive + "/key_padding_mask"
    if name not in g.made:
        flat, real = additive + "/flat", additive + "/real"
        shape, zero = additive + "/flat_shape", additive + "/zero"
        g.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array([0, -1], np.int64), shape),
                numpy_helper.from_array(np.zeros((), np.float32), zero),
            ]
        )
        g.made[name] = [
            helper.make_node("Reshape", [additive, shape], [flat], name=flat),
            helper.make_node("Equal", [flat, zero], [real], name=real),
            helper.make_node("Cast", [real], [name], name=name, to=onnx.TensorProto.INT32),
        ]
    return name


def _fuse_gelu(g: _Graph, fc1_add: onnx.NodeProto) -> onnx.NodeProto | None:
    """fc1's bias Add followed by the tanh GELU chain, ending in the Mul whose output fc2 reads."""
    matmul = bias = None
    for b, m in ((0, 1), (1, 0)):
        if g.parent(fc1_add, m, "MatMul") is not None and g.const(fc1_add.input[b]) is not None:
            matmul, bias = fc1_add.input[m], fc1_add.input[b]
    if matmul is None:
        return None
    x = fc1_add.output[0]
    chain, seen, frontier = [], {x}, [x]
    while frontier:  # every node computed from x alone (plus constants), up to the Tanh chain's end
        name = frontier.pop()
        for user in g.consumers.get(name, []):
            if user.op_type not in ("Mul", "Add", "Tanh") or id(user) in {id(c) for c in chain}:
                continue
            if all(i in seen or g.const(i) is not None for i in user.input):
                chain.append(user)
                seen.add(user.output[0])
                frontier.append(user.output[0])
    ops = sorted(n.op_type for n in chain)
    consts = [float(c) for n in chain for i in n.input if (c := g.const(i)) is not None and np.size(c) == 1]
    if (
        ops != sorted(["Mul"] * 6 + ["Add"] * 2 + ["Tanh"])
        or len(consts) != len(_GELU_CONSTANTS)
        or not all(any(abs(c - e) < 1e-6 for c in consts) for e in _GELU_CONSTANTS)
    ):
        return None
    ends = [n for n in chain if not any(u in chain for u in g.consumers.get(n.output[0], []))]
    if len(ends) != 1:
        return None
    for n in (fc1_add, *chain):
        g.removed.add(id(n))
    return helper.make_node(
        "FastGelu",
        [matmul, bias],
        [ends[0].output[0]],
        name=fc1_add.name.rsplit("/", 2)[0] + "/FastGelu",
        domain=MS_DOMAIN,
    )


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Nodes whose outputs nobody reads (the shape arithmetic the fused reshapes used), and unused weights."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def fuse_vision(model: onnx.ModelProto, num_heads: int) -> dict[str, int]:
    """Rewrites `model` in place; returns how many attention and GELU blocks were fused and how many were not."""
    g = _Graph(model)
    new: dict[int, onnx.NodeProto] = {}  # position of the node a fused node replaces -> the fused node
    counts = {"attention": 0, "attention_unfused": 0, "gelu": 0, "gelu_unfused": 0}
    for pos, node in enumerate(list(g.graph.node)):
        if node.op_type == "Softmax":
            fused = _fuse_attention(g, node, num_heads)
            counts["attention" if fused else "attention_unfused"] += 1
        elif node.op_type == "Add" and "/fc1/" in node.name:
            fused = _fuse_gelu(g, node)
            counts["gelu" if fused else "gelu_unfused"] += 1
        else:
            continue
        if fused is not None:
            new[pos] = fused
    nodes, placed = [], False
    for pos, node in enumerate(g.graph.node):
        if pos in new:
            if not placed:  # the shared mask nodes, before the first fused node (their input is computed earlier)
                nodes.extend(n for made in g.made.values() for n in made)
                placed = True
            nodes.append(new[pos])
        if id(node) not in g.removed:
            nodes.append(node)
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    _drop_dead(g.graph)
    for node in new.values():  # shape inference knows no com.microsoft op; the quantizers need the output type
        # (FastGelu's output is the MLP's width, not the hidden size: a shared name would tell ONNX Runtime's
        # planner they are one size wherever no operator's own inference says otherwise, as with MatMulF32)
        width = "hidden" if node.op_type == "MultiHeadAttention" else "intermediate"
        g.graph.value_info.append(
            helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, ["tiles", "patches", width])
        )
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    counts["unmasked_branch"] = branch_on_full_mask(model)
    return counts


def branch_on_full_mask(model: onnx.ModelProto) -> int:
    """Each MultiHeadAttention with a key_padding_mask -> If(all patches real) {the node without its mask}
    else {the node as it was}; returns how many. The condition is computed once, from the shared mask."""
    graph = model.graph
    attention = [n for n in graph.node if n.op_type == "MultiHeadAttention" and len(n.input) > 4 and n.input[4]]
    if not attention:
        return 0
    mask = attention[0].input[4]
    assert all(n.input[4] == mask for n in attention), "one key_padding_mask for every layer"
    lowest, full = mask + "/lowest", mask + "/all_real"
    condition = [
        helper.make_node("ReduceMin", [mask], [lowest], name=lowest, keepdims=0),
        helper.make_node("Cast", [lowest], [full], name=full, to=onnx.TensorProto.BOOL),
    ]
    nodes = []
    for node in graph.node:
        if node not in attention:
            nodes.append(node)
            continue
        if condition:
            nodes.extend(condition)  # before the first layer: the mask is computed by then
            condition = []
        nodes.append(
            helper.make_node(
                "If",
                [full],
                [node.output[0]],
                name=node.name + "/if_all_real",
                then_branch=_branch(node, node.input[:4], "unmasked"),
                else_branch=_branch(node, node.input, "masked"),
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    return len(attention)


def _branch(node: onnx.NodeProto, inputs, tag: str) -> onnx.GraphProto:
    """A one-node graph: `node` on `inputs` (names from the enclosing graph)."""
    out = f"{node.output[0]}/{tag}"
    inner = helper.make_node(node.op_type, list(inputs), [out], name=f"{node.name}/{tag}", domain=node.domain)
    inner.attribute.extend(node.attribute)
    return helper.make_graph(
        [inner],
        f"{node.name}/{tag}",
        [],
        [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, ["tiles", "patches", "hidden"])],
    )


def fuse_file(path: Path, num_heads: int) -> dict[str, int]:
    """fuse_vision on a saved part, written back in place (weights beside it when it is over protobuf's limit)."""

    model = onnx.load(str(path))
    counts = fuse_vision(model, num_heads)
    save_part(model, path)
    return counts
