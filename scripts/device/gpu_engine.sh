#!/usr/bin/env bash
# Run on a 1-GPU machine from the repository root: the engine on CUDA (Triton kernels) against
# transformers (fp32 greedy tokens, bf16 logits).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
python3 scripts/device/gpu_engine_check.py --device cuda --out "$OUT/engine_check.json" 2>&1 | tee "$OUT/engine_check.log"
