#!/usr/bin/env bash
# Runs on the GPU machine (H100/H200): the kernel tests at full shapes, then the kernel
# benchmark. Everything lands in $OUT (the device tool's output folder; runs/gpu_kernels
# elsewhere): env.txt, kernel_tests.log, kernels_bench.{md,json,log}.
#
#   bash scripts/device/gpu_kernels.sh [--sweep] [--quick]     (extra args go to the benchmark)
#
# Uses the machine's own python3 (torch + triton preinstalled); wheels carried in .whl/ are
# installed first when present (the machine cannot download anything).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/runs/gpu_kernels}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem --format=csv
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
} 2>&1 | tee "$OUT/env.txt"

status=0
start=$(date +%s)
# 4 workers: the fp32 torch references of the largest prefill cases need ~8 GB each.
"$PY" -m pytest -q -p no:cacheprovider -n 4 tests/kernels 2>&1 | tee "$OUT/kernel_tests.log" || status=1
echo "kernel tests: $(( $(date +%s) - start )) s" | tee -a "$OUT/kernel_tests.log"

start=$(date +%s)
"$PY" benchmarks/kernel_bench.py --out "$OUT/kernels_bench.md" --json "$OUT/kernels_bench.json" "$@" 2>&1 \
    | tee "$OUT/kernels_bench.log" || status=1
echo "benchmark: $(( $(date +%s) - start )) s" | tee -a "$OUT/kernels_bench.log"
exit $status
