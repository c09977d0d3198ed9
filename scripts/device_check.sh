#!/usr/bin/env bash
# The CUDA device check (issue 16), run on a lent GPU: the Triton tests on the device itself, then
# scripts/device_check.py (parity with transformers and speed on random 8B- and 1.5B-shaped bf16 models).
# usage: scripts/device_check.sh OUT_DIR [device_check.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/device_check.sh OUT_DIR}; shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/kernels/test_triton_attention.py 2>&1 | tee "$OUT/triton_tests.txt" | tail -5
timeout 540 $PY scripts/device_check.py "$OUT" "$@" 2>&1 | tee "$OUT/device_check.log" | grep -v "^ " | tail -60
