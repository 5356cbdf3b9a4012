"""`edgevlm bench`: speed and memory of a model on this machine, per variant and execution provider.

Workload W1 (docs/benchmarks.md): one 512x512 image as a single tile, about 80 prompt tokens, 32 new tokens with
end-of-sequence ignored. Each variant runs in a fresh subprocess so its load time and peak RSS are its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

from .engine.bundle_format import with_external_data
from .errors import EdgeVLMError

QUESTION = "Describe this image in one detailed sentence, mentioning colours and shapes."


@dataclass
class BenchResult:
    variant: str
    providers: str
    load_s: float
    vision_ms_per_tile: float
    prefill_ms: float
    first_token_ms: float
    decode_tokens_per_s: float
    end_to_end_s: float
    prompt_tokens: int
    new_tokens: int
    peak_rss_mb: float
    bundle_mb: float
    kernels: str = ""  # edgevlm's own kernels in use (engine/kernels.py); "" when ONNX Runtime's run everywhere


def w1_image(size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), (xx ^ yy) & 255], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def run_one(
    model: str, variant: str, providers: str | None, threads: int | None, runs: int, new_tokens: int
) -> BenchResult:
    """Measure one variant in this process (call through `measure` to get a fresh process)."""
    import edgevlm

    t0 = time.perf_counter()
    vlm = edgevlm.load(model, variant=variant, providers=providers, threads=threads, vision_cache_size=0)
    load_s = time.perf_counter() - t0
    image = w1_image(vlm.spec.tile)
    vlm.ask(image, QUESTION, max_new_tokens=4, split=False, ignore_eos=True)  # warm-up
    results = []
    for _ in range(runs):
        t = time.perf_counter()
        r = vlm.ask(image, QUESTION, max_new_tokens=new_tokens, split=False, ignore_eos=True)
        results.append((r, time.perf_counter() - t))
    med = lambda f: statistics.median(f(r, s) for r, s in results)  # noqa: E731
    size = sum(p.stat().st_size for p in with_external_data(vlm.files.values()))
    return BenchResult(
        variant=variant,
        providers=",".join(vlm.providers["decoder_model_merged"]),
        load_s=round(load_s, 3),
        vision_ms_per_tile=round(med(lambda r, s: r.vision_ms / max(r.tiles, 1)), 1),
        prefill_ms=round(med(lambda r, s: r.prefill_ms), 1),
        first_token_ms=round(med(lambda r, s: r.first_token_ms), 1),
        decode_tokens_per_s=round(med(lambda r, s: r.decode_tokens_per_s), 1),
        end_to_end_s=round(med(lambda r, s: s), 3),
        prompt_tokens=results[0][0].prompt_tokens,
        new_tokens=results[0][0].new_tokens,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        bundle_mb=round(size / 1e6, 1),
        kernels=", ".join(f"{part} {what}" for part, what in vlm.kernels.items()),
    )


def measure(
    model: str,
    variant: str,
    providers: str | None = None,
    threads: int | None = None,
    runs: int = 3,
    new_tokens: int = 32,
) -> BenchResult:
    """Measure one variant in a fresh process. A problem the user can fix (EdgeVLMError) comes back as the same
    error class with its message; anything else as a RuntimeError with the child's last line."""
    args = json.dumps([str(model), variant, providers, threads, runs, new_tokens])
    out = subprocess.run([sys.executable, "-m", "edgevlm.bench", args], capture_output=True, text=True)
    last = (out.stdout.strip().splitlines() or ["{}"])[-1]
    try:
        record = json.loads(last)
    except json.JSONDecodeError:
        record = {}
    if out.returncode != 0 or "error" in record:
        if "error" in record:
            err = EdgeVLMError(f"benchmark of {variant}: {record['error']}")
            err.exit_code = record.get("exit_code", 1)
            raise err
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeVLMError(f"benchmark of {variant} failed in its child process: {tail}")
    return BenchResult(**record)


def _child(argv: list[str]) -> int:
    try:
        result = run_one(*json.loads(argv[0]))
    except EdgeVLMError as e:
        print(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        return e.exit_code
    print(json.dumps(dataclasses.asdict(result)))
    return 0


def import_time(repeats: int = 5) -> float:
    """Median seconds for `import edgevlm` in a fresh interpreter."""
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", "import time; t=time.perf_counter(); import edgevlm; print(time.perf_counter()-t)"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def table(results: list[BenchResult]) -> str:
    head = (
        "| variant | providers | load s | vision ms/tile | prefill ms | TTFT ms | decode tok/s | W1 end-to-end s "
        "| prompt tok | peak RSS MB | bundle MB | own kernels |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {r.variant} | {r.providers.replace('ExecutionProvider', '')} | {r.load_s} | {r.vision_ms_per_tile} | "
        f"{r.prefill_ms} | {r.first_token_ms} | {r.decode_tokens_per_s} | {r.end_to_end_s} | {r.prompt_tokens} | "
        f"{r.peak_rss_mb} | {r.bundle_mb} | {r.kernels or '-'} |"
        for r in results
    ]
    return "\n".join([head, *rows])


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
