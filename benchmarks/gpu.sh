#!/usr/bin/env bash
# Everything that needs a GPU, in one go (about 10 minutes on one H100):
# the fast paths on CUDA, then the training and evaluation benchmarks.
#   bash benchmarks/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m pytest -q -rs tests/test_fast.py tests/test_distributed.py -k "cuda or stream" \
    2>&1 | tee "$out/tests.txt"
python benchmarks/train_speed.py --device cuda --epochs 5 2>&1 | tee "$out/train_speed.txt"
python benchmarks/eval_speed.py --k 5000 --n 10000 --device cuda --rounds 1 \
    2>&1 | tee "$out/eval_speed.txt"
# lossless compression with the nets on the GPU (a 1-epoch Fashion-MNIST model; the
# coding itself runs on the CPU, so this shows what the GPU takes off the nets)
python -m vaelab -q train --config configs/fashion-mnist-mlp.toml --epochs 1 --out "$out/fm1" \
    --no-progress
python benchmarks/compress.py "$out/fm1" --k 0 --repeat 3 --device cuda 2>&1 | tee "$out/compress.txt"
