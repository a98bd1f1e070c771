#!/usr/bin/env bash
# nvidia-h200 (one GPU), session 5, second call: the one-row form's RMSNorm inside the GEMV in its two modes
# (LLM_CORE_GEMV_NORM=late, the default: 1/rms summed in the weight loop; =exact: a first pass over the row
# and rms_norm's rounding) against the unfused form (LLM_CORE_ROW_FUSION=0), tp=1 decode steps alternating,
# logits compared, profiles of the batch-1 step; then, side by side, the fused-GEMV kernel tests at full
# shapes and the engine against transformers (fp32 greedy incl. each prompt alone; bf16 logits).
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
TP="python3 benchmarks/tp_decode.py --tp 1 --batch 1 64 --ctx 512 --iters 30 --mode graph"
LLM_CORE_ROW_FUSION=0 step unfused_a 120 $TP --save-logits /tmp/unfused.pt
LLM_CORE_ROW_FUSION=1 step late_a 120 $TP --save-logits /tmp/late.pt
LLM_CORE_ROW_FUSION=1 LLM_CORE_GEMV_NORM=exact step exact_a 120 $TP --save-logits /tmp/exact.pt
LLM_CORE_ROW_FUSION=0 step unfused_b 120 $TP
LLM_CORE_ROW_FUSION=1 step late_b 120 $TP
LLM_CORE_ROW_FUSION=1 LLM_CORE_GEMV_NORM=exact step exact_b 120 $TP
python3 scripts/device/compare_logits.py /tmp/unfused.pt /tmp/late.pt >> "$OUT/late_a.log" 2>&1
python3 scripts/device/compare_logits.py /tmp/unfused.pt /tmp/exact.pt >> "$OUT/exact_a.log" 2>&1
LLM_CORE_ROW_FUSION=1 step profile_late 120 python3 benchmarks/profile_decode.py --tp 1 --batch 1 --out "$OUT/profile_tp1_late.md"
LLM_CORE_ROW_FUSION=0 step profile_unfused 120 python3 benchmarks/profile_decode.py --tp 1 --batch 1 \
    --out "$OUT/profile_tp1_unfused.md"
step kernel_tests 300 python3 -m pytest -q -p no:cacheprovider -n 6 tests/kernels/test_kernel_gemv_fused.py &
LLM_CORE_ROW_FUSION=1 step engine_check 300 python3 scripts/device/gpu_engine_check.py --device cuda --out "$OUT/engine_check.json" &
wait
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
