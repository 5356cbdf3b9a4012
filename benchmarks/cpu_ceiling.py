"""What this CPU can do at best, for the 'impossible target' arguments in docs/benchmarks.md.

Measures, with 2 threads: fp32 matrix-multiply throughput on the vision encoder's own shapes (through onnxruntime,
the kernels edgevlm uses, and through numpy's BLAS), int8 MatMulInteger throughput, and memory bandwidth (a large
array copy). Prints the implied floors: vision ms per 512 tile (≈ 213 GFLOP at fp32) and decode tok/s per
weight format (every weight read once per token).

Where a C compiler is present it also builds benchmarks/peak.c for this CPU (-march=native) and prints the
instruction peaks (fp32 FMA, bf16 and int8 dot products, registers only) and its read bandwidth: what a kernel's
fraction of the CPU's peak is measured against, and the floors of the W1 parts on it.

    python benchmarks/cpu_ceiling.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

VISION_GFLOP = 213.0  # SigLIP-B/16 at 512: 12 layers x (1024 tokens x 7.1 M MACs + attention 1.6 GMAC) x 2
VISION_GEMM_GOP = 174.0  # of which the products by weights (int8 in `mixed`)
VISION_ATTENTION_GFLOP = 38.7  # and attention's two products (bf16 on edgevlm's kernel)
PREFILL_GFLOP_PER_TOKEN = 0.212  # the 256M decoder's 4-bit products: 30 layers x 3.54 M weights x 2
DECODE_MB_PER_TOKEN = 98.0  # `mixed` decoder: 4-bit codes + fp16 scales/corrections 66 MB, the 8-bit lm_head 32 MB


def instruction_peaks(threads: int = 2) -> dict[str, float]:
    """benchmarks/peak.c built for this CPU and run: {kind: G operations (or GB) per second}; empty without a
    compiler."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        return {}
    source = Path(__file__).with_name("peak.c")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "peak"
        built = subprocess.run(
            [cc, "-O3", "-march=native", "-fopenmp", str(source), "-o", str(binary)], capture_output=True
        )
        if built.returncode != 0:
            return {}
        out = subprocess.run([str(binary), str(threads)], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if len(line.split()) == 3}


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


def attention_gflops(threads: int, tokens: int = 1024, heads: int = 12, head_dim: int = 64, reps: int = 10) -> float:
    """ONNX Runtime's fp32 MultiHeadAttention on one vision layer's shape: what our attention kernel is held against
    where it has no build (AVX2)."""
    width = heads * head_dim
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, tokens, width]) for n in "qkvo"]
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft", num_heads=heads)
    model = helper.make_model(
        helper.make_graph([node], "g", io[:3], io[3:]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {n: np.random.default_rng(2).standard_normal((1, tokens, width)).astype(np.float32) for n in "qkv"}
    sess.run(None, feeds)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, feeds)
        best = min(best, time.perf_counter() - t)
    return 2 * 2 * tokens * tokens * width / best / 1e9


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
    peaks = instruction_peaks()
    for kind, value in peaks.items():
        print(f"peak, 2 threads: {kind} {value:.0f} {'GB/s' if kind.endswith('bandwidth') else 'G ops/s'}")
    int8_peak, bf16_peak = peaks.get("int8_dot_avx512vnni"), peaks.get("bf16_dot_avx512")
    if int8_peak and bf16_peak:
        gemm, attention = VISION_GEMM_GOP / int8_peak * 1e3, VISION_ATTENTION_GFLOP / bf16_peak * 1e3
        print(
            f"W1 floors at those peaks: vision {gemm:.0f} ms (int8 products) + {attention:.0f} ms (bf16 attention) "
            f"= {gemm + attention:.0f} ms per tile; an 88-token prefill {88 * PREFILL_GFLOP_PER_TOKEN / bf16_peak * 1e3:.0f}"
            f" ms in bf16, {88 * PREFILL_GFLOP_PER_TOKEN / int8_peak * 1e3:.0f} ms in int8"
        )
    # Each share against the peak on as many threads, measured next to it (a VM's second core comes and goes).
    for threads in (1, 2):
        rate, at = attention_gflops(threads), instruction_peaks(threads)
        fma = at.get("fp32_fma_avx512") or at.get("fp32_fma_avx2")
        share = f", {rate / fma * 100:.0f} % of the fp32 FMA peak ({fma:.0f})" if fma else ""
        print(
            f"fp32 MultiHeadAttention (onnxruntime, 1,024 tokens x 12 heads x 64, {threads} thread(s)): "
            f"{rate:.0f} GFLOP/s (best of 10){share}"
        )
    if "read_bandwidth" in peaks:
        print(f"decode floor of `mixed`: {peaks['read_bandwidth'] * 1e3 / DECODE_MB_PER_TOKEN:.0f} tok/s (reads only)")


if __name__ == "__main__":
    main()
