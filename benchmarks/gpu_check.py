"""The GPU path in one run: CUDA execution-provider parity and speed against CPU fp32 and PyTorch (issue 29).

    python benchmarks/gpu_check.py CHECKPOINT BUNDLE [--providers cuda] [--runs 5] [--out table.md]

BUNDLE needs the fp32 and fp16 variants (`edgevlm export CHECKPOINT -o BUNDLE --variants fp32,fp16`; the GPU
machine has torch, so it can export there). CHECKPOINT is the transformers folder it came from (PyTorch eager on
the same device is the speed reference). It prints one markdown table set:

1. parity: greedy tokens of fp32 on the GPU against fp32 on the CPU on the exporter's verification cases (an image
   with splitting, one without, text only): they must be equal; fp16's agreement is reported (share of positions
   equal up to the first difference);
2. whether onnxruntime silently fell back to the CPU for any part (`vlm.fell_back_to_cpu`);
3. W1 (one 512 px tile, 32 new tokens) and W2 (the same image split: 17 tiles) for fp32 and fp16, against PyTorch
   eager fp32 on the same device, in the same run;
4. decode tokens/s with the KV cache resident on the device (IO binding) against copies through the host (the
   feed-back loop), and peak device memory (nvidia-smi, sampled).

`--providers cpu` runs everything on the CPU: what CI runs (tests/test_gpu_check.py) so the script stays correct
between the rare runs on a real GPU. docs/gpu.md says how to bring onnxruntime-gpu onto the GPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line

CASE_TOKENS = 16


def parity(bundle: str, providers: str) -> tuple[list[str], bool, bool]:
    """Rows of table 1, whether fp32 matched everywhere, and whether any part fell back to the CPU."""
    from edgevlm_export.verify import sample_inputs

    import edgevlm

    cpu = edgevlm.load(bundle, variant="fp32", providers="cpu")
    dev = {v: edgevlm.load(bundle, variant=v, providers=providers) for v in ("fp32", "fp16")}
    fell_back = any(vlm.fell_back_to_cpu for vlm in dev.values())
    rows, all_equal = [], True
    for s in sample_inputs(cpu.spec.tile):
        messages = (
            edgevlm.Engine.user_message(s.image, s.question)
            if s.image is not None
            else [{"role": "user", "content": s.question}]
        )
        want = cpu.chat(messages, max_new_tokens=CASE_TOKENS, split=s.split, ignore_eos=True).token_ids
        got = {
            v: vlm.chat(messages, max_new_tokens=CASE_TOKENS, split=s.split, ignore_eos=True).token_ids
            for v, vlm in dev.items()
        }
        equal = got["fp32"] == want
        all_equal &= equal
        rows.append(f"| {s.name} | {equal} | {_agreement(got['fp16'], want):.2f} |")
    return rows, all_equal, fell_back


def _agreement(a: list[int], b: list[int]) -> float:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n / max(len(b), 1)


def edgevlm_speed(
    bundle: str, variant: str, providers: str, split: bool, runs: int, new_tokens: int, host_kv: bool = False
) -> dict:
    import edgevlm
    from edgevlm.bench import QUESTION, w1_image

    vlm = edgevlm.load(bundle, variant=variant, providers=providers, vision_cache_size=0)
    if host_kv:  # the feed-back loop: each step's cache goes to host memory and back
        vlm.decoder.shares_kv = False
    image = w1_image(vlm.spec.tile)
    results = [
        vlm.ask(image, QUESTION, max_new_tokens=new_tokens, split=split, ignore_eos=True) for _ in range(runs + 1)
    ][1:]
    return {
        "s": statistics.median(r.total_ms / 1e3 for r in results),
        "vision_ms": statistics.median(r.vision_ms / max(r.tiles, 1) for r in results),
        "prefill_ms": statistics.median(r.prefill_ms for r in results),
        "decode": statistics.median(r.decode_tokens_per_s for r in results),
        "tiles": results[0].tiles,
    }


def pytorch_speed(checkpoint: str, bundle: str, device: str, split: bool, runs: int, new_tokens: int) -> float:
    """PyTorch eager fp32 on `device`, the runtime's own prompt ids and pixel values (the same inputs)."""
    import torch
    from transformers import SmolVLMForConditionalGeneration

    import edgevlm
    from edgevlm.bench import QUESTION, w1_image

    model = SmolVLMForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval().to(device)
    prep = edgevlm.Processor.open(bundle)
    image = w1_image(prep.spec.tile)
    ids = torch.tensor(
        [prep.prepare(edgevlm.Engine.user_message(image, QUESTION), split=split).input_ids], device=device
    )
    pixels = torch.from_numpy(prep.preprocess(image, split=split).pixel_values[None]).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
            past, tok, n = out.past_key_values, out.logits[:, -1:].argmax(-1), ids.shape[1]
            for _ in range(new_tokens - 1):
                out = model(
                    input_ids=tok,
                    past_key_values=past,
                    use_cache=True,
                    attention_mask=torch.ones(1, n + 1, dtype=torch.long, device=device),
                )
                past, tok, n = out.past_key_values, out.logits[:, -1:].argmax(-1), n + 1
            sync()
            if i:  # the first run warms up CUDA's kernels and allocator
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


class DeviceMemory:
    """Peak memory used on GPU 0, sampled from nvidia-smi every 50 ms (ONNX Runtime's allocations are invisible
    to torch.cuda's counters). None where there is no nvidia-smi."""

    def __init__(self):
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                used = float(out.stdout.strip().splitlines()[0])
                self.peak_mb = max(self.peak_mb or 0.0, used)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("bundle")
    p.add_argument("--providers", default="cuda", help="cuda (the check), or cpu (its CPU fallback, for CI)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", default=None, help="also write the tables to this file")
    a = p.parse_args()
    device = "cuda" if a.providers == "cuda" else "cpu"
    lines = [
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} · providers {a.providers} · "
        f"{_device_line(device)} · {cpu_line()}",
        "command: python " + " ".join(sys.argv),
        "",
    ]
    rows, equal, fell_back = parity(a.bundle, a.providers)
    lines += [
        f"| case ({CASE_TOKENS} greedy tokens) | {a.providers} fp32 tokens = CPU fp32 | {a.providers} fp16 "
        f"agreement with CPU fp32 |",
        "|---|---|---|",
        *rows,
        "",
        f"fell back to the CPU: {fell_back}",
        "",
    ]
    lines += [
        "| workload | system | end to end s | vs PyTorch | vision ms/tile | prefill ms | decode tok/s | "
        "peak device MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, split in (("W1", False), ("W2", True)):
        torch_s = pytorch_speed(a.checkpoint, a.bundle, device, split, a.runs, a.new_tokens)
        lines.append(f"| {name} | PyTorch fp32 eager ({device}) | {torch_s:.3f} | 1.0x | | | | |")
        for variant in ("fp32", "fp16"):
            with DeviceMemory() as mem:
                r = edgevlm_speed(a.bundle, variant, a.providers, split, a.runs, a.new_tokens)
            lines.append(
                f"| {name} | edgevlm {variant} | {r['s']:.3f} | {torch_s / r['s']:.1f}x | "
                f"{r['vision_ms']:.1f} | {r['prefill_ms']:.1f} | {r['decode']:.1f} | "
                f"{'' if mem.peak_mb is None else f'{mem.peak_mb:.0f}'} |"
            )
    lines += ["", "| KV cache (fp16, W1) | decode tok/s |", "|---|---|"]
    for label, host in (("resident on the device (IO binding)", False), ("copied through the host", True)):
        r = edgevlm_speed(a.bundle, "fp16", a.providers, False, a.runs, a.new_tokens, host_kv=host)
        lines.append(f"| {label} | {r['decode']:.1f} |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0 if equal and not fell_back else 1


def _device_line(device: str) -> str:
    if device != "cuda":
        return "no GPU (the CPU fallback path)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return "GPU: " + out.stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "GPU: (nvidia-smi not found)"


if __name__ == "__main__":
    sys.exit(main())
