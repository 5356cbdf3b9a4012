"""W1 through the C API (cpp_bindings) and through the Python runtime, on the same bundle in the same run.

    python benchmarks/compare_cpp.py BUNDLE BUILD_DIR [--variants fp32,q4] [--threads 2] [--runs 5]

BUILD_DIR is a cmake build of cpp_bindings (it holds edgevlm-cpp-bench). Prints a markdown table for
docs/benchmarks.md with the CPU line; "C outside ORT" is the C library's own time per caption (preprocessing,
tokenizer, prompt, sampling, copies): end-to-end minus the time inside ONNX Runtime's Run calls; "of which
resizing" is the image preprocessing part of it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("build_dir")
    p.add_argument("--variants", default="fp32,q4")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args()

    import edgevlm
    from edgevlm.bench import QUESTION, measure, w1_image

    tile = edgevlm.Processor.open(a.bundle).spec.tile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "w1.raw"
        w1_image(tile).tofile(raw)
        for v in a.variants.split(","):
            py = measure(a.bundle, v, "cpu", a.threads, a.runs, a.new_tokens)
            out = subprocess.run(
                [
                    str(Path(a.build_dir) / "edgevlm-cpp-bench"),
                    a.bundle,
                    v,
                    str(raw),
                    str(tile),
                    str(tile),
                    str(a.runs),
                    str(a.new_tokens),
                    str(a.threads),
                    QUESTION,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append((v, py, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} · {cpu_line()} · {a.threads} threads")
    print("command: python " + " ".join(sys.argv))
    print(
        "\n| variant | API | vision ms/tile | prefill ms | decode tok/s | W1 s | C outside ORT ms | of which resizing ms "
        "| peak RSS MB |\n|---|---|---|---|---|---|---|---|---|"
    )
    for v, py, c in rows:
        print(
            f"| {v} | Python | {py.vision_ms_per_tile} | {py.prefill_ms} | {py.decode_tokens_per_s} | "
            f"{py.end_to_end_s} | — | — | {py.peak_rss_mb} |"
        )
        print(
            f"| {v} | C | {c['vision_ms_per_tile']} | {c['prefill_ms']} | {c['decode_tokens_per_s']} | "
            f"{c['end_to_end_s']} | {c['outside_runtime_ms']} | {c['preprocess_ms']} | {c['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
