"""W1 with edgevlm's kernel library and without it (EDGEVLM_KERNELS=off: ONNX Runtime's own kernels, the runtime
before the library), rounds alternating in fresh processes, and issue 26's targets for this CPU's class checked on
the medians. This VM's speed drifts between runs, so only alternation in one run compares; each side's peak RSS is
its own process's.

    python benchmarks/kernels_on_off.py BUNDLE [--variants mixed] [--rounds 5] [--runs 3] [--threads 2]

Each round runs `edgevlm bench BUNDLE --variants V --runs R --json` once per side (the order flips every round);
the table holds the medians over rounds of each run's median. The targets (issue 26, "Done when"): on the AVX-512
VNNI class vision <= 200 ms/tile, decode >= 1.5x and prefill <= 0.5x of the run without the library; on AMX vision
<= 120 ms/tile and decode >= 200 tok/s; on AVX2 only, no phase slower than without it. The comparisons with
OpenVINO and PyTorch are benchmarks/run_w1.sh's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_flags, cpu_line

# (key in `edgevlm bench --json`, label, True where more is better)
PHASES = (
    ("vision_ms_per_tile", "vision ms/tile", False),
    ("prefill_ms", "prefill ms", False),
    ("decode_tokens_per_s", "decode tok/s", True),
    ("end_to_end_s", "W1 s", False),
    ("peak_rss_mb", "peak RSS MB", False),
)


def cpu_class(flags: set[str]) -> str:
    if "amx_tile" in flags:
        return "AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    return "AVX2" if "avx2" in flags else "other"


def bench(bundle: str, variant: str, runs: int, threads: int | None, kernels_on: bool) -> dict:
    """One `edgevlm bench` process; its result record for `variant`."""
    env = dict(os.environ)
    env.pop("EDGEVLM_KERNELS", None)
    if not kernels_on:
        env["EDGEVLM_KERNELS"] = "off"
    argv = [sys.executable, "-m", "edgevlm.cli", "bench", bundle, "--variants", variant, "--runs", str(runs), "--json"]
    if threads:
        argv += ["--threads", str(threads)]
    run = subprocess.run(argv, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"edgevlm bench failed (exit {run.returncode}): {run.stderr.strip()[-1500:]}")
    return json.loads(run.stdout)["results"][0]


def targets(klass: str, on: dict[str, float], off: dict[str, float]) -> list[tuple[str, bool]]:
    """Issue 26's targets for this class, each with whether the medians meet it."""
    speedup = off["decode_tokens_per_s"] and on["decode_tokens_per_s"] / off["decode_tokens_per_s"]
    if klass == "AVX-512 VNNI":
        return [
            (f"vision {on['vision_ms_per_tile']:.0f} <= 200 ms/tile", on["vision_ms_per_tile"] <= 200),
            (f"decode {speedup:.2f}x >= 1.5x", speedup >= 1.5),
            (
                f"prefill {on['prefill_ms'] / off['prefill_ms']:.2f}x <= 0.5x",
                on["prefill_ms"] <= 0.5 * off["prefill_ms"],
            ),
        ]
    if klass == "AMX":
        return [
            (f"vision {on['vision_ms_per_tile']:.0f} <= 120 ms/tile", on["vision_ms_per_tile"] <= 120),
            (f"decode {on['decode_tokens_per_s']:.0f} >= 200 tok/s", on["decode_tokens_per_s"] >= 200),
        ]
    return [
        (f"{label} no worse than without the library", (on[key] >= off[key]) if more else (on[key] <= off[key]))
        for key, label, more in PHASES
        if key != "peak_rss_mb"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--variants", default="mixed", help="comma list; each measured on its own")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (the issue asks medians of >= 5)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs inside each bench process")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    flags = cpu_flags()
    klass = cpu_class(flags)
    print(cpu_line())
    print(f"class: {klass}; {args.rounds} rounds, `edgevlm bench --runs {args.runs}` per side, alternating")
    met_all = True
    for variant in args.variants.split(","):
        sides: dict[bool, list[dict]] = {True: [], False: []}
        for r in range(args.rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                sides[on].append(bench(args.bundle, variant, args.runs, args.threads, on))
        med = {on: {k: statistics.median(x[k] for x in rs) for k, _, _ in PHASES} for on, rs in sides.items()}
        print(f"\n{variant}: kernels {sides[True][0].get('kernels') or '(none)'}")
        print(f"| {'':16} | {'library':>9} | {'off':>9} | {'ratio':>6} |")
        for key, label, _ in PHASES:
            a, b = med[True][key], med[False][key]
            digits = 3 if key == "end_to_end_s" else 1
            print(f"| {label:16} | {a:9.{digits}f} | {b:9.{digits}f} | {a / b if b else float('nan'):6.2f} |")
        for text, ok in targets(klass, med[True], med[False]):
            print(f"  {'met    ' if ok else 'NOT met'}  {text}")
            met_all &= ok
    sys.exit(0 if met_all else 1)


if __name__ == "__main__":
    main()
