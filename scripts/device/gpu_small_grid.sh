#!/usr/bin/env bash
# nvidia-h200 (or h100): decode-attention latency at small grids (batch-1 steps; per-rank heads at tp=2),
# the per-kernel profile of a decode step (1, 64 and 256 rows: W1 runs at ~200), and of a 512-token prefill (LAT's).
# About 3 minutes with the machine's start.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
timeout 150 python3 benchmarks/kernel_bench.py --small-grid --out "$OUT/small_grid.md" 2>&1 | tee "$OUT/small_grid.log"
timeout 150 python3 benchmarks/profile_decode.py --batch 1 64 256 --out "$OUT/profile.md" > "$OUT/profile.log" 2>&1
timeout 120 python3 benchmarks/profile_decode.py --prefill 512 --out "$OUT/profile_prefill512.md" > "$OUT/profile_prefill512.log" 2>&1
