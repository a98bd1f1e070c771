#!/usr/bin/env bash
# nvidia-h200: decode sweep + L2-state study (ceiling launched eagerly), then the kernel benchmark table.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
timeout 100 python3 benchmarks/kernels.py --decode-sweep --out "$OUT/decode_sweep.md" 2>&1 | tee "$OUT/decode_sweep.log"
timeout 80 python3 benchmarks/kernels.py --out "$OUT/kernels_bench.md" --json "$OUT/kernels_bench.json" 2>&1 | tee "$OUT/kernels_bench.log"
