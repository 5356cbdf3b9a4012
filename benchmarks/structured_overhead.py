"""What a structured answer costs: decode tokens/s with and without a JSON-schema constraint, in one run, and the
time to compile a constraint.

    python benchmarks/structured_overhead.py BUNDLE [--variant mixed] [--threads 2] [--runs 3]

Each prompt is answered constrained first; the unconstrained answer is then made exactly as long (ignore_eos,
max_new_tokens = the constrained length), so both decode the same number of tokens at the same context lengths.
Text-only prompts: the overhead is per decoded token, and the trained-decoder test bundle has a random vision tower.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

from machine import cpu_line

import edgevlm
from edgevlm import Constraint

SCHEMAS = {
    "flags (bool + int)": {
        "type": "object",
        "additionalProperties": False,
        "required": ["person", "count"],
        "properties": {"person": {"type": "boolean"}, "count": {"type": "integer", "minimum": 0, "maximum": 99}},
    },
    "caption + list (free strings)": {
        "type": "object",
        "additionalProperties": False,
        "required": ["caption", "objects", "count"],
        "properties": {
            "caption": {"type": "string", "maxLength": 160},
            "objects": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 6},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
        },
    },
}
PROMPTS = [
    "Describe a kitchen with two people cooking, as JSON.",
    "A cat sits on a red sofa next to a lamp. Answer in JSON.",
    "What is on a busy street at night? Reply with JSON.",
    "Describe the weather on a sunny beach in JSON.",
]


def timed(fn, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--variant", default="mixed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {cpu_line()}; "
        f"edgevlm {edgevlm.__version__}, variant {args.variant}, {args.threads} threads"
    )
    vlm = edgevlm.load(args.bundle, variant=args.variant, threads=args.threads)

    t0 = time.perf_counter()
    vlm.grammars.ll_tokenizer()
    print(f"\ntoken table for the constraint engine (once per model): {(time.perf_counter() - t0) * 1e3:.0f} ms")
    print("\n| schema | compile + check ms | matcher per answer ms |\n|---|---|---|")
    for name, schema in SCHEMAS.items():
        compile_ms = timed(lambda schema=schema: Constraint.json_schema(schema))
        c = Constraint.json_schema(schema)
        start_ms = timed(lambda c=c: vlm.grammars.start(c))
        print(f"| {name} | {compile_ms:.2f} | {start_ms:.2f} |")

    vlm.ask(None, "warm up", max_new_tokens=8)
    print("\n| schema | answers | tokens (median) | free tok/s | constrained tok/s | slower by | mask ms/token |")
    print("|---|---|---|---|---|---|---|")
    for name, schema in SCHEMAS.items():
        c = Constraint.json_schema(schema)
        free, held, lengths, mask_ms = [], [], [], []
        for _ in range(args.runs):
            for prompt in PROMPTS:
                r = vlm.ask(None, prompt, max_new_tokens=200, constraint=c)
                u = vlm.ask(None, prompt, max_new_tokens=r.new_tokens, ignore_eos=True)
                held.append(r.decode_tokens_per_s)
                free.append(u.decode_tokens_per_s)
                lengths.append(r.new_tokens)
                mask_ms.append(_mask_time(vlm, c, r.token_ids))
        f, h = statistics.median(free), statistics.median(held)
        print(
            f"| {name} | {len(held)} | {statistics.median(lengths):.0f} | {f:.1f} | {h:.1f} | "
            f"{(f / h - 1) * 100:+.1f} % | {statistics.median(mask_ms):.3f} |"
        )
    print(f"\nexample answer: {vlm.ask(None, PROMPTS[1], constraint=c, max_new_tokens=200).text}")


def _mask_time(vlm, constraint, tokens) -> float:
    """The constraint's own work per token (mask + follow), replayed over an answer's tokens without the model."""
    state = vlm.grammars.start(constraint)
    t0 = time.perf_counter()
    for t in tokens:
        state.allowed()
        state.consume(t)
    return (time.perf_counter() - t0) * 1e3 / max(len(tokens), 1)


if __name__ == "__main__":
    main()
