"""The aarch64 stage's token and logit cases, run on both machines with the same bundles and images:

    python cases.py prepare WORK   # x86 host, with edgevlm[export]: bundles, images, x86 tokens and logits
    python cases.py check WORK     # aarch64 root, runtime only: the same cases, compared with the x86 record

`check` fails (exit 1) when an fp32 case's greedy tokens differ from x86, when its logits differ by more than
FP32_TOLERANCE, or when an int8/q4 case differs from x86 where x86's int8/q4 tokens equal x86's fp32 tokens (a
quantized case that already departs from fp32 on x86 sits on a near-tie: its result is reported, not required).
It writes WORK/aarch64.json: per case, tokens equal or not, the first differing step, the largest logit difference.
Runs through the public API only (edgevlm.load, VLM.ask with a logits processor that records each step's row).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

# The largest difference of one step's logits, relative to that row's largest magnitude. fp32 on ARM and x86 runs
# the same graph through different GEMM kernels (MLAS NEON vs AVX-512: other blockings, so other summation orders
# and FMA contractions); each product is exact to 2^-24 and a row sums a few hundred to a few thousand of them, so
# differences of 1e-6..1e-5 of the row's scale are expected (measured: see docs/arm64.md). 1e-4 leaves room for
# longer sums while still catching a wrong kernel (a swapped or dropped term moves logits by percent).
FP32_TOLERANCE = 1e-4

# (bundle, variant, name, image or None, question, max_new_tokens)
CASES = [
    ("tiny256", "fp32", "image_split", "scene.png", "Describe this image.", 12),
    ("tiny256", "fp32", "image_no_split", "wide.png", "What is on the left?", 12),
    ("tiny256", "fp32", "text_only", None, "Tell me about the sea.", 12),
    ("tiny256", "int8", "image_split", "scene.png", "Describe this image.", 12),
    ("tiny256", "q4", "image_split", "scene.png", "Describe this image.", 12),
    ("tiny22b", "fp32", "image_split", "scene.png", "Describe this image.", 8),
    ("real", "fp32", "text_only", None, "What is the capital of France?", 8),
    ("real", "int8", "text_only", None, "What is the capital of France?", 8),
]


def _images(work: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for name, (w, h) in {"scene.png": (640, 480), "wide.png": (900, 300)}.items():
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255) // (w - 1), (yy * 255) // (h - 1), (xx + 2 * yy) % 256], -1)
        pixels = np.clip(base + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(work / name)


def prepare(work: Path) -> None:
    """Bundles (tiny 256M all variants, tiny 2.2B fp32, the real SmolLM2 decoder fp32 + int8), images, and x86's
    record of every case."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's tools/
    from edgevlm_export.pipeline import export

    from tools.checkpoints import make_checkpoint, real_text_bundle

    work.mkdir(parents=True, exist_ok=True)
    _images(work)
    for name, arch, variants in (("tiny256", "256M", "fp32,int8,q4"), ("tiny22b", "2.2B", "fp32")):
        if not (work / name / "edgevlm.json").is_file():
            ckpt = make_checkpoint(work / "ckpt" / name, arch=arch, size="tiny", seed=0)
            export(ckpt, work / name, variants, log=lambda m: None)
    if not (work / "real" / "edgevlm.json").is_file():
        bundle, _ = real_text_bundle(work / "real-build", work / "tiny256" / "onnx" / "vision_encoder.onnx")
        from edgevlm.engine.bundle_format import write_manifest

        # fp32 and int8 only (q4 adds minutes of emulated time), with a file table so it loads verified like an
        # exported bundle.
        variants = json.loads((bundle / "edgevlm.json").read_text())["variants"]
        for f in (bundle / "onnx").glob("*_q4.onnx*"):
            f.unlink()
        write_manifest(bundle, {"variants": {k: v for k, v in variants.items() if k in ("fp32", "int8")}})
        bundle.rename(work / "real")
        shutil.rmtree(work / "real-build")  # its 1 GB checkpoint: CI's disk is not ours to fill
    record = run(work)
    np.savez_compressed(work / "x86_logits.npz", **{k: v.pop("logits") for k, v in record.items()})
    (work / "x86.json").write_text(json.dumps({"machine": machine(), "cases": record}, indent=1))
    print(f"prepared {len(record)} cases in {work}")


def machine() -> dict:
    return {"arch": platform.machine(), "python": platform.python_version(), "system": platform.platform()}


def run(work: Path) -> dict[str, dict]:
    """Every case through the public API: tokens, text, each step's logits row, seconds."""
    import edgevlm

    out: dict[str, dict] = {}
    models: dict[tuple[str, str], object] = {}
    for bundle, variant, name, image, question, max_new in CASES:
        key = f"{bundle}/{variant}/{name}"
        if (bundle, variant) not in models:
            models[(bundle, variant)] = edgevlm.load(work / bundle, variant=variant, threads=2, progress=False)
        vlm = models[(bundle, variant)]
        rows: list[np.ndarray] = []

        def record(_new_ids, scores, rows=rows):
            rows.append(np.array(scores, dtype=np.float32, copy=True))
            return scores

        t0 = time.perf_counter()
        result = vlm.ask(
            None if image is None else str(work / image), question, max_new_tokens=max_new, logits_processors=[record]
        )
        out[key] = {
            "tokens": list(result.token_ids),
            "text": result.text,
            "seconds": time.perf_counter() - t0,
            "logits": np.stack(rows),
        }
        print(f"{key}: {len(result.token_ids)} tokens in {out[key]['seconds']:.1f} s: {result.text!r}", flush=True)
    return out


def compare(x86: dict, x86_logits: dict, here: dict) -> tuple[list[dict], list[str]]:
    """Per case: tokens equal, first differing step, largest relative logit difference over the common prefix."""
    rows, failures = [], []
    for key, mine in here.items():
        ref = x86["cases"][key]
        bundle, variant, name = key.split("/")
        a, b = mine["tokens"], ref["tokens"]
        first = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        steps = len(a) if first is None else first + 1  # the logits rows both runs share
        la, lb = mine["logits"][:steps], x86_logits[key][:steps]
        rel = float(max((np.abs(p - q).max() / max(np.abs(q).max(), 1e-30) for p, q in zip(la, lb)), default=0.0))
        fp32_ref = x86["cases"].get(f"{bundle}/fp32/{name}")
        quant_agrees = fp32_ref is not None and fp32_ref["tokens"] == b
        row = {
            "case": key,
            "tokens_equal": first is None,
            "first_difference": first,
            "max_rel_logit_diff": rel,
            "x86_quantized_equals_x86_fp32": quant_agrees if variant != "fp32" else None,
            "seconds": round(mine["seconds"], 1),
            "text": mine["text"],
        }
        rows.append(row)
        if variant == "fp32":
            if first is not None:
                failures.append(f"{key}: greedy tokens differ from x86 at step {first}")
            if rel > FP32_TOLERANCE:
                failures.append(f"{key}: logits differ from x86 by {rel:.2e} of their scale (> {FP32_TOLERANCE})")
        elif first is not None and quant_agrees:
            failures.append(f"{key}: tokens differ from x86 at step {first}, where x86 {variant} equals x86 fp32")
    return rows, failures


def check(work: Path) -> int:
    x86 = json.loads((work / "x86.json").read_text())
    with np.load(work / "x86_logits.npz") as z:
        x86_logits = {k: z[k] for k in z.files}
    rows, failures = compare(x86, x86_logits, run(work))
    (work / "aarch64.json").write_text(json.dumps({"machine": machine(), "cases": rows}, indent=1))
    for r in rows:
        print(
            f"{r['case']:28s} tokens {'equal' if r['tokens_equal'] else 'DIFFER at ' + str(r['first_difference'])}"
            f"  max rel logit diff {r['max_rel_logit_diff']:.2e}  {r['seconds']} s"
        )
    for f in failures:
        print("FAIL", f, file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("prepare", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    work = Path(argv[1])
    if argv[0] == "prepare":
        prepare(work)
        return 0
    return check(work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
