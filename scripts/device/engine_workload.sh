#!/usr/bin/env bash
# The anchor kit's workloads through the engine alone on one GPU, with the step timeline, for each engine
# setting given as an argument (LLM_* variables, space-separated; "default" for none), one after the other:
#   bash scripts/device/engine_workload.sh "W1 W2" "LLM_WARMUP=0 LLM_MIXED_PREFILL_TOKENS=0" default
# Results: $OUT/workload_<n>.json (benchmarks/engine_workload.py) and $OUT/workload.log.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
workloads=$1; shift
n=0
for setting in "$@"; do
    n=$((n + 1))
    [ "$setting" = default ] && setting=""
    echo "== $n: ${setting:-default} ($workloads)" | tee -a "$OUT/workload.log"
    # shellcheck disable=SC2086
    env $setting timeout 400 python3 benchmarks/engine_workload.py --workloads $workloads --label "${setting:-default}" \
        --out "$OUT/workload_$n.json" 2>&1 | grep -v "^\[llm_core rank 0\] INFO" | tail -n 6 | tee -a "$OUT/workload.log"
done
