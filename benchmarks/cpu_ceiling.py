"""What this CPU can do at best, for the 'impossible target' arguments in docs/benchmarks.md.

Measures, with 2 threads: fp32 matrix-multiply throughput on the vision encoder's own shapes (through onnxruntime,
the kernels edgevlm uses, and through numpy's BLAS), int8 MatMulInteger throughput, and memory bandwidth (a large
array copy). Prints the implied floors: vision ms per 512 tile (≈ 213 GFLOP at fp32) and decode tok/s per
weight format (every weight read once per token).

    python benchmarks/cpu_ceiling.py
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

VISION_GFLOP = 213.0  # SigLIP-B/16 at 512: 12 layers x (1024 tokens x 7.1 M MACs + attention 1.6 GMAC) x 2


def _session(op: str, m: int, k: int, n: int):
    rng = np.random.default_rng(0)
    if op == "MatMul":
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        xt, yt = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        w = numpy_helper.from_array(rng.integers(-127, 127, (k, n)).astype(np.int8), "w")
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        xt, yt = TensorProto.UINT8, TensorProto.INT32
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", xt, [m, k])],
        [helper.make_tensor_value_info("y", yt, [m, n])],
        [w],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def gflops(op: str, m=1024, k=768, n=3072, reps=10) -> float:
    sess = _session(op, m, k, n)
    x = (
        np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        if op == "MatMul"
        else np.random.default_rng(1).integers(0, 255, (m, k)).astype(np.uint8)
    )
    sess.run(None, {"x": x})
    t = time.perf_counter()
    for _ in range(reps):
        sess.run(None, {"x": x})
    return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9


def bandwidth_gbs(mb: int = 512, reps: int = 5) -> float:
    a = np.ones(mb * 2**20 // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = time.perf_counter()
    for _ in range(reps):
        np.copyto(b, a)
    return 2 * a.nbytes * reps / (time.perf_counter() - t) / 1e9  # read + write


def main() -> None:
    fp32 = max(gflops("MatMul"), gflops("MatMul", 1024, 3072, 768))
    int8 = max(gflops("MatMulInteger"), gflops("MatMulInteger", 1024, 3072, 768))
    bw = bandwidth_gbs()
    print(
        f"fp32 MatMul (onnxruntime, 2 threads): {fp32:.0f} GFLOP/s -> vision floor {VISION_GFLOP / fp32 * 1e3:.0f} "
        f"ms per 512 tile"
    )
    print(
        f"int8 MatMulInteger: {int8:.0f} GOP/s -> vision floor {VISION_GFLOP / int8 * 1e3:.0f} ms per tile if every "
        f"op were int8"
    )
    print(
        f"memory bandwidth (copy): {bw:.1f} GB/s -> decode ceilings: fp32 540 MB/token {bw * 1e3 / 540:.0f} tok/s, "
        f"int8 ~150 MB {bw * 1e3 / 150:.0f} tok/s, 4-bit ~100 MB {bw * 1e3 / 100:.0f} tok/s"
    )


if __name__ == "__main__":
    main()
