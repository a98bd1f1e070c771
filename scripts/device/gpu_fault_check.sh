#!/usr/bin/env bash
# Issue 13 on one H200: kill -9 of the rank-0 engine worker, then of the llm stub, each while a
# W1-like load (600 requests, 256 closed-loop gRPC streams) runs on the anchor's 8B-shaped model.
# Rerunnable. Device call (from the checkout root):
#   bash scripts/device/gpu_fault_check.sh
#   carry: [".anchor/bin", ".anchor/ours", ".device/openai-whl"]   (the load needs tritonclient, which the
#   kit's venv lacks: .device/openai-whl holds it, see scripts/device/README.md)
# If the device call is cut at 10 min, call it again: run_ours.sh skips a server already up.
# Results: $OUT/fault_check.json and the step logs; copy the numbers into benchmarks/RESULTS.md.
source "$(dirname "$0")/_step.sh"
use_client_wheels
step start_server 300 bash .anchor/bin/run_ours.sh warmup
PY=${PY:-$VENV/bin/python}
step fault_check 330 "$PY" scripts/device/gpu_fault_check.py --out "$OUT/fault_check.json"
cp /tmp/ours_res/*.log "$OUT/" 2>/dev/null || true
bash .anchor/bin/run_ours.sh stop > "$OUT/stop.log" 2>&1 || true
