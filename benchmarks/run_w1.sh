#!/usr/bin/env bash
# W1 for PyTorch, every edgevlm variant, OpenVINO and llama.cpp, back to back in one run: the table in
# docs/benchmarks.md.
#   benchmarks/run_w1.sh CHECKPOINT BUNDLE OV_DIR OV_PYTHON [LLAMA_BIN TEXT_GGUF MMPROJ_GGUF...]
# OV_PYTHON: a Python with optimum-intel[openvino] and transformers 4.57 (optimum-intel 2.2 refuses newer).
# LLAMA_BIN etc.: llama.cpp's build/bin and the GGUF files benchmarks/compare_llamacpp.py describes (optional).
set -euo pipefail
ckpt=$1 bundle=$2 ov_dir=$3 ov_python=$4
here=$(dirname "$0")
date -u +"%Y-%m-%d %H:%M UTC"; lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
python "$here/compare_pytorch.py" "$ckpt" "$bundle" --threads 2 --runs 3
"$ov_python" "$here/compare_openvino.py" "$ckpt" "$ov_dir" --runs 3
if [ $# -ge 7 ]; then
  python "$here/compare_llamacpp.py" "$5" "$6" "${@:7}" --threads 2 --runs 3
fi
