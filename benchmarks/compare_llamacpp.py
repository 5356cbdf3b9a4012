"""W1 through llama.cpp's mtmd CLI, printed as rows of the benchmark table.

llama.cpp is built from the llama-cpp-python sdist (it vendors llama.cpp with tools/mtmd and the converter):

    pip download --no-deps --no-binary :all: llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz
    cd llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF
    cmake --build build -j2 --target llama-mtmd-cli llama-quantize
    python BENCHMARKS/llamacpp_convert.py CKPT --outfile text-f16.gguf --outtype f16   # see that file
    python convert_hf_to_gguf.py CKPT --outfile mmproj-q8_0.gguf --outtype q8_0 --mmproj
    build/bin/llama-quantize text-f16.gguf text-q4_k_m.gguf Q4_K_M

    python benchmarks/compare_llamacpp.py LLAMA_BUILD_BIN TEXT_GGUF MMPROJ_GGUF [--runs 3]

llamacpp_convert.py says what a locally built checkpoint needs for the text model's conversion. mtmd's SmolVLM
path encodes a global view beside the slices even for one 512 px tile; an mmproj converted from a copy of the
checkpoint whose preprocessor_config.json has size.longest_edge 512 gives its smallest split (2 encoder runs),
the hub's 2048 gives 17. The prompt and image are W1's (the same question and synthetic
512x512 image as `edgevlm bench`), greedy, 32 new tokens with end-of-sequence ignored. W1 is read from the
log's timestamps: from "loading model" (both models loaded) to the last timing line, so it holds reading the PNG,
preprocessing, the encoder runs, the prompt and the 32 tokens, and not the load.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_openvino import QUESTION, w1_image
from machine import cpu_line

STAMP = r"^(\d+)\.(\d+)\.(\d+)\.(\d+) "  # llama.cpp's log prefix: minutes.seconds.milliseconds.microseconds


def stamp(line: str) -> float:
    m, s, ms, us = (int(g) for g in re.match(STAMP, line).groups())
    return m * 60 + s + ms / 1e3 + us / 1e6


def run_once(bin_dir: Path, text: Path, mmproj: Path, image: Path, threads: int, new_tokens: int) -> dict:
    """One process: models load, then (from the "loading model" line, logged once both are loaded) the image is
    read, preprocessed, encoded and the answer generated; that span is W1, the load is reported apart."""
    cmd = [
        str(bin_dir / "llama-mtmd-cli"),
        "-m",
        str(text),
        "--mmproj",
        str(mmproj),
        "--image",
        str(image),
        "-p",
        QUESTION,
        "-n",
        str(new_tokens),
        "--ignore-eos",
        "--temp",
        "0",
        "-t",
        str(threads),
        "--no-warmup",
        "--perf",
        "-lv",
        "4",
        "--log-timestamps",
        "--log-prefix",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"llama-mtmd-cli failed ({out.returncode}):\n{out.stderr[-2000:]}")
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if re.match(STAMP, ln)]
    start = next(stamp(ln) for ln in lines if "main: loading model" in ln)
    end = next(stamp(ln) for ln in lines if "llama_perf_context_print:       total time" in ln)
    encodes = [int(m) for ln in lines for m in re.findall(r"mtmd batch encoding done in (\d+) ms", ln)]
    evals = [
        re.search(r"eval time =\s+([\d.]+) ms /\s+(\d+) runs", ln)
        for ln in lines
        if "llama_perf_context_print:        eval time" in ln
    ]
    eval_ms, runs = float(evals[-1].group(1)), int(evals[-1].group(2))
    return {
        "w1_s": end - start,
        "load_s": start,
        "encodes": len(encodes),
        "encode_ms": sum(encodes),
        "decode_tok_s": runs / (eval_ms / 1e3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bin_dir", type=Path, help="llama.cpp's build/bin")
    p.add_argument("text", type=Path)
    p.add_argument("mmproj", type=Path, nargs="+")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=32)
    a = p.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "w1.png"
        w1_image(512).save(image)
        print("| llama.cpp text | mmproj | encoder runs | encode ms (all runs) | decode tok/s | W1 s | load s |")
        print("|---|---|---|---|---|---|---|")
        for mmproj in a.mmproj:
            rows = [run_once(a.bin_dir, a.text, mmproj, image, a.threads, a.new_tokens) for _ in range(a.runs)]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(
                f"| {a.text.name} | {mmproj.name} | {med['encodes']:.0f} | {med['encode_ms']:.0f} | "
                f"{med['decode_tok_s']:.1f} | {med['w1_s']:.3f} | {med['load_s']:.2f} |"
            )


if __name__ == "__main__":
    main()
