"""The decoder alone: the W1-sized prefill's time and the tokens/s of the decode steps after it, several decoder
files alternating in one process (this machine's speed drifts between runs, so only alternation compares). A kernel
graph (*.kernels.onnx) runs on edgevlm's kernel library.

    python benchmarks/decoder_alone.py DECODER.onnx [DECODER2.onnx ...] [--rounds 6] [--steps 48] [--threads 2]

Each file must be edgevlm's fused decoder (inputs_embeds, attention_mask, past_key_values.* updated in place).
The inputs are random embeddings: this measures speed, not answers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line

from edgevlm.engine import kernels
from edgevlm.engine.kv_cache import SharedKVCache
from edgevlm.engine.providers import session_options


def shape_of(session: ort.InferenceSession) -> tuple[int, int, int, int]:
    """(layers, kv_heads, head_dim, hidden) from the decoder's inputs."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
    _, kv_heads, _, head_dim = inputs["past_key_values.0.key"]
    return layers, int(kv_heads), int(head_dim), int(inputs["inputs_embeds"][2])


def prefill_and_decode(session: ort.InferenceSession, prompt: np.ndarray, steps: int) -> tuple[float, float]:
    """(prefill ms, decode tokens/s)."""
    layers, kv_heads, head_dim, _ = shape_of(session)
    names = {i.name for i in session.get_inputs()}
    extra = {"num_logits_to_keep": np.array(1, np.int64)} if "num_logits_to_keep" in names else {}
    n = prompt.shape[1]
    kv = SharedKVCache(session, layers, kv_heads, head_dim, np.float32, n + steps, 8192)
    start = time.perf_counter()
    kv.run({"inputs_embeds": prompt, "attention_mask": np.ones((1, n), np.int64), **extra}, 0, n)
    prefill = (time.perf_counter() - start) * 1e3
    x = np.ascontiguousarray(prompt[:, -1:])
    start = time.perf_counter()
    for i in range(steps):
        kv.run({"inputs_embeds": x, "attention_mask": np.ones((1, n + i + 1), np.int64), **extra}, n + i, 1)
    return prefill, steps / (time.perf_counter() - start)


def open_decoder(path: str, threads: int) -> ort.InferenceSession:
    options = session_options(threads, True)
    if path.endswith(".kernels.onnx"):
        options.register_custom_ops_library(str(kernels.library()))
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("decoders", nargs="+")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--prompt-tokens", type=int, default=88)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    sessions = [open_decoder(f, a.threads) for f in a.decoders]
    hidden = shape_of(sessions[0])[3]
    prompt = (np.random.default_rng(0).standard_normal((1, a.prompt_tokens, hidden)) * 0.05).astype(np.float32)
    for s in sessions:
        prefill_and_decode(s, prompt, 8)  # warm-up
    results: list[list[tuple[float, float]]] = [[] for _ in sessions]
    for _ in range(a.rounds):
        for r, s in zip(results, sessions):
            r.append(prefill_and_decode(s, prompt, a.steps))
    print(f"{cpu_line()} · {a.threads} threads · {a.prompt_tokens}-token prefill, {a.steps} decode steps\n")
    print("| decoder | prefill ms per round | median | decode tok/s per round | median |\n|---|---|---|---|---|")
    for f, r in zip(a.decoders, results):
        pre, dec = [p for p, _ in r], [d for _, d in r]
        print(
            f"| {f} | {' / '.join(f'{v:.1f}' for v in pre)} | {statistics.median(pre):.1f} "
            f"| {' / '.join(f'{v:.1f}' for v in dec)} | {statistics.median(dec):.1f} |"
        )


if __name__ == "__main__":
    main()
