#!/usr/bin/env bash
# Prepare onnxruntime-gpu for the lent GPU machine (no network there; each device call carries at most 64 MiB):
# download the CUDA 13 wheel for its Python 3.12 and cut it into 60 MiB parts under .gpu-wheel/ (git-ignored).
#   benchmarks/gpu_carry.sh [VERSION]      -> .gpu-wheel/part-aa, part-ab, ...  (docs/gpu.md: the device calls)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-1.31.1}
rm -rf .gpu-wheel && mkdir -p .gpu-wheel
python -m pip download -q "onnxruntime-gpu==$version" --no-deps --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --only-binary=:all: -d .gpu-wheel
wheel=$(ls .gpu-wheel/*.whl)
(cd .gpu-wheel && sha256sum "$(basename "$wheel")" > SHA256SUMS && basename "$wheel" > NAME)
split -b 60M -d -a 2 "$wheel" .gpu-wheel/part-
rm "$wheel"
ls -la .gpu-wheel
