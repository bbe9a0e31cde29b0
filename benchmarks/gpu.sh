#!/usr/bin/env bash
# Everything that needs a GPU, in one go (at most 10 minutes on one H200): the fast paths'
# tests on CUDA, the training and evaluation benchmarks, the best CPU config's recipe
# trained on the GPU for a fixed time, and compression with the nets on the GPU.
#   bash benchmarks/gpu.sh [OUT_DIR]
# Each part has its own time cap (seconds, GPU_CAP_<PART> to change), so that one slow
# part cannot take the others' time; what a capped part printed is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
work="$(mktemp -d)"  # run directories: only the printed results go to OUT_DIR
mkdir -p "$out"
part() {  # part NAME CAP_SECONDS COMMAND...: run it capped, its output into OUT/NAME.txt
    local name=$1 cap=$2; shift 2
    echo "== $name (at most $cap s)"
    local t0=$SECONDS
    timeout "$cap" "$@" 2>&1 | tee "$out/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$out/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
part tests "${GPU_CAP_TESTS:-60}" python -m pytest -q -rs -p no:cacheprovider \
    tests/test_fast.py tests/test_distributed.py tests/test_evaluate.py -k "cuda or stream"
part train_speed "${GPU_CAP_TRAIN:-200}" python benchmarks/train_speed.py --device cuda --epochs 3
part eval_speed "${GPU_CAP_EVAL:-70}" python benchmarks/eval_speed.py --k 5000 --n 2000 \
    --device cuda --rounds 1
# docs/quality.md's best CPU recipe (round 11) on the GPU, beside the same recipe with 500
# pseudo-inputs, both for the same minutes: epochs per minute on this GPU, and the two
# runs' validation estimates at equal epochs (benchmarks/compare_runs.py)
export work minutes="${GPU_QUALITY_MINUTES:-1.5}"
quality() {
    local recipe=(--config configs/fashion-mnist-mlp-vamp-ema.toml --epochs 340
                  --iwae-epochs 310 --lr-cooldown 50 --skip-spikes 10 --device cuda
                  --no-progress --time-limit "$minutes")
    python -m vaelab -q train "${recipe[@]}" --out "$work/k100" &
    python -m vaelab -q train "${recipe[@]}" --prior-components 500 --out "$work/k500" &
    wait
    python benchmarks/compare_runs.py "$work/k100" "$work/k500"
}
export -f quality
part quality "${GPU_CAP_QUALITY:-180}" bash -c quality
# lossless compression with the nets on the GPU (a 1-epoch Fashion-MNIST model; the
# coding itself runs on the CPU, so this shows what the GPU takes off the nets)
compress() {
    python -m vaelab -q train --config configs/fashion-mnist-mlp.toml --epochs 1 \
        --out "$work/fm1" --no-progress --device cuda
    python benchmarks/compress.py "$work/fm1" --k 0 --repeat 3 --device cuda
}
export -f compress
part compress "${GPU_CAP_COMPRESS:-70}" bash -c compress
rm -rf "$work"
