#!/usr/bin/env bash
# One device call on an H200: the decode sweep (batch 1 x 32k shapes, fused vs unfused split merge),
# then the kernel tests at full shapes and the full kernel benchmark (scripts/device/gpu_kernels.sh).
#   bash scripts/device/gpu_kernels_session2.sh      (results under $OUT)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/runs/gpu_kernels}"; mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
timeout 200 python3 benchmarks/kernels.py --decode-sweep --out "$OUT/decode_sweep.md" 2>&1 | tee "$OUT/decode_sweep.log"
echo "decode sweep: $(( $(date +%s) - start )) s" | tee -a "$OUT/decode_sweep.log"
OUT="$OUT" bash scripts/device/gpu_kernels.sh
