"""W1 through transformers + PyTorch (fp32, eager) and through edgevlm, in one run, with ratios.

    python benchmarks/compare_pytorch.py CHECKPOINT BUNDLE [--variants fp32,int8,q4,mixed] [--threads 2]

CHECKPOINT is the transformers folder the BUNDLE was exported from. Prints a markdown table for
docs/benchmarks.md. Needs the export extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def pytorch_w1(checkpoint: str, threads: int, runs: int, new_tokens: int) -> dict:
    import torch
    from transformers import SmolVLMForConditionalGeneration

    import edgevlm
    from edgevlm.bench import QUESTION, w1_image

    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = SmolVLMForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()
    load_s = time.perf_counter() - t
    # The runtime's own preprocessing and prompt give both sides identical inputs (no ONNX part is loaded here,
    # so the peak RSS is PyTorch's alone).
    prep = edgevlm.Processor.open(checkpoint_bundle)
    image = w1_image(prep.spec.tile)
    prepared = prep.prepare(edgevlm.Engine.user_message(image, QUESTION), split=False)
    pixels = torch.from_numpy(prep.preprocess(image, split=False).pixel_values[None])
    ids = torch.tensor([prepared.input_ids])
    rows = []
    with torch.no_grad():
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            feats = model.model.get_image_features(pixels)
            t1 = time.perf_counter()
            out = model(input_ids=ids, image_hidden_states=feats, use_cache=True)
            t2 = time.perf_counter()
            past, tok, n = out.past_key_values, out.logits[:, -1:].argmax(-1), ids.shape[1]
            for _ in range(new_tokens - 1):
                out = model(
                    input_ids=tok,
                    past_key_values=past,
                    use_cache=True,
                    attention_mask=torch.ones(1, n + 1, dtype=torch.long),
                )
                past, tok, n = out.past_key_values, out.logits[:, -1:].argmax(-1), n + 1
            t3 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, (new_tokens - 1) / (t3 - t2), t3 - t0))
    rows = rows[1:]
    med = lambda i: statistics.median(r[i] for r in rows)  # noqa: E731
    return {
        "variant": "PyTorch fp32 eager",
        "load_s": round(load_s, 2),
        "vision_ms_per_tile": round(med(0) * 1e3, 1),
        "prefill_ms": round(med(1) * 1e3, 1),
        "first_token_ms": round((med(0) + med(1)) * 1e3, 1),
        "decode_tokens_per_s": round(med(2), 1),
        "end_to_end_s": round(med(3), 3),
        "prompt_tokens": ids.shape[1],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    global checkpoint_bundle
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("bundle")
    p.add_argument("--variants", default="fp32,fp16,int8,q4,mixed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args()
    checkpoint_bundle = a.bundle

    from edgevlm.bench import measure

    ours = [measure(a.bundle, v, "cpu", a.threads, a.runs, a.new_tokens) for v in a.variants.split(",")]
    torch_row = pytorch_w1(a.checkpoint, a.threads, a.runs, a.new_tokens)
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True)
    print(f"{datetime.date.today()} · {cpu.stdout.strip()} · {a.threads} threads · python {platform.python_version()}")
    print("command: python " + " ".join(sys.argv))
    print(
        "\n| system | vision ms/tile | prefill ms | TTFT ms | decode tok/s | W1 end-to-end s | speed-up vs PyTorch "
        "| peak RSS MB | bundle MB |\n|---|---|---|---|---|---|---|---|---|"
    )
    t = torch_row
    print(
        f"| {t['variant']} | {t['vision_ms_per_tile']} | {t['prefill_ms']} | {t['first_token_ms']} | "
        f"{t['decode_tokens_per_s']} | {t['end_to_end_s']} | 1.0× | {t['peak_rss_mb']} | — |"
    )
    for r in ours:
        print(
            f"| edgevlm {r.variant} | {r.vision_ms_per_tile} | {r.prefill_ms} | {r.first_token_ms} | "
            f"{r.decode_tokens_per_s} | {r.end_to_end_s} | {t['end_to_end_s'] / r.end_to_end_s:.1f}× | "
            f"{r.peak_rss_mb} | {r.bundle_mb} |"
        )
    _ = np  # numpy imported for the runtime side


checkpoint_bundle = ""

if __name__ == "__main__":
    main()
