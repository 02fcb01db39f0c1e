#!/usr/bin/env bash
# GPU checks and figures for the README, on one CUDA GPU (about 5 minutes on an H200):
#   1. the GPU tests: pytest -m gpu tests/test_gpu.py;
#   2. epoch time of the MNIST MLP (784-512-256-10) and CNN (32-64 channels, batch norm) on 60,000
#      MNIST-shaped images (real digits upscaled, written as IDX files: nothing downloads);
#   3. trials per minute of `automl search --workers 1` and `--workers 4` on one GPU (16 trials of
#      5 epochs of equal cost, no pruning), stores created before the clock starts;
# then prints a markdown table. Usage: bash benchmarks/gpu.sh [JSON_OUT]   (PYTHON=... to override)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${1:-gpu-figures.json}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu.sh: CUDA is not available to $PYTHON (torch.cuda.is_available() is False): nothing measured." >&2
    exit 2
fi
"$PYTHON" -c 'import torch; print("gpu.sh:", torch.cuda.get_device_name(), "torch", torch.__version__)'

echo "== GPU tests"
tests_status=0
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py || tests_status=$?

echo "== epoch times and trials per minute (speed.py's GPU figures)"
timeout 360 "$PYTHON" - "$OUT" <<'PY'
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "benchmarks")
from speed import gpu_figures  # epoch times on 60,000 images; --workers 1 and 4 on one GPU

with tempfile.TemporaryDirectory() as tmp:
    figures = gpu_figures(Path(tmp), seed=0)
Path(sys.argv[1]).write_text(json.dumps(figures, indent=2))
w1, w4 = figures["workers_1"], figures["workers_4"]
print()
print(f"GPU: {figures['device']}")
print()
print("| measure | value |")
print("| --- | ---: |")
print(f"| MLP 784-512-256-10 epoch, 60,000 images (54,000 trained), batch 256 | {figures['mlp_epoch_seconds']:.2f} s |")
print(f"| CNN 32-64 channels + batch norm epoch, same data, batch 256 | {figures['cnn_epoch_seconds']:.2f} s |")
print(f"| `--workers 1`, 16 trials x 5 epochs | {w1['trials_per_minute']:.1f} trials/min |")
print(f"| `--workers 4` on the same GPU | {w4['trials_per_minute']:.1f} trials/min "
      f"({w4['trials_per_minute'] / w1['trials_per_minute']:.2f}x) |")
PY
echo "figures written to $OUT"
if [ "$tests_status" -ne 0 ]; then
    echo "gpu.sh: the GPU tests failed (exit $tests_status)" >&2
    exit "$tests_status"
fi
