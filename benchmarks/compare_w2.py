"""W2 through transformers + PyTorch (fp32, eager) and through edgevlm, in one run: a 512x512 photo with image
splitting (SmolVLM2's default for stills: upscaled to 2048, 4x4 tiles plus a global view = 17 tiles, ~1,140
prompt tokens), 32 new tokens with end-of-sequence ignored.

    python benchmarks/compare_w2.py CHECKPOINT BUNDLE [--variants mixed,int8] [--runs 2] [--torch-runs 1]

Both sides get the runtime's own prompt ids and pixel values (the same inputs); prints a markdown table with the
CPU line for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line


def pytorch_w2(checkpoint: str, bundle: str, threads: int, runs: int, new_tokens: int) -> float:
    import torch
    from transformers import SmolVLMForConditionalGeneration

    import edgevlm
    from edgevlm.bench import QUESTION, w1_image

    torch.set_num_threads(threads)
    model = SmolVLMForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()
    prep = edgevlm.Processor.open(bundle)
    image = w1_image(prep.spec.tile)
    ids = torch.tensor([prep.prepare(edgevlm.Engine.user_message(image, QUESTION), split=True).input_ids])
    pixels = torch.from_numpy(prep.preprocess(image, split=True).pixel_values[None])
    times = []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
            past, tok, n = out.past_key_values, out.logits[:, -1:].argmax(-1), ids.shape[1]
            for _ in range(new_tokens - 1):
                out = model(
                    input_ids=tok,
                    past_key_values=past,
                    use_cache=True,
                    attention_mask=torch.ones(1, n + 1, dtype=torch.long),
                )
                past, tok, n = out.past_key_values, out.logits[:, -1:].argmax(-1), n + 1
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def edgevlm_w2(bundle: str, variant: str, threads: int, runs: int, new_tokens: int) -> tuple[float, dict]:
    import edgevlm
    from edgevlm.bench import QUESTION, w1_image

    vlm = edgevlm.load(bundle, variant=variant, threads=threads, vision_cache_size=0)
    image = w1_image(vlm.spec.tile)
    results = [
        vlm.ask(image, QUESTION, max_new_tokens=new_tokens, split=True, ignore_eos=True) for _ in range(runs + 1)
    ][1:]
    r = results[len(results) // 2]
    return statistics.median(x.total_ms / 1e3 for x in results), {
        "tiles": r.tiles,
        "prompt_tokens": r.prompt_tokens,
        "vision_ms": round(r.vision_ms),
        "prefill_ms": round(r.prefill_ms),
        "decode_tok_s": round(r.decode_tokens_per_s, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("bundle")
    p.add_argument("--variants", default="mixed,int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--torch-runs", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args()
    ours = {v: edgevlm_w2(a.bundle, v, a.threads, a.runs, a.new_tokens) for v in a.variants.split(",")}
    torch_s = pytorch_w2(a.checkpoint, a.bundle, a.threads, a.torch_runs, a.new_tokens)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} · {cpu_line()} · {a.threads} threads")
    print("command: python " + " ".join(sys.argv))
    print("\n| system | W2 s | speed-up vs PyTorch | tiles | prompt tokens | vision ms | prefill ms | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| PyTorch fp32 eager | {torch_s:.2f} | 1.0x | | | | | |")
    for v, (s, d) in ours.items():
        print(
            f"| edgevlm {v} | {s:.2f} | {torch_s / s:.1f}x | {d['tiles']} | {d['prompt_tokens']} | {d['vision_ms']} "
            f"| {d['prefill_ms']} | {d['decode_tok_s']} |"
        )


if __name__ == "__main__":
    main()
