#!/usr/bin/env bash
# nvidia-h200 (one GPU), session 5 (written when the form was on by default; now LLM_CORE_ROW_FUSION=1 is
# set where it is meant): the one-row layer form (ops.row_fusion) — each RMSNorm inside the GEMV
# after it, each residual add inside the row-parallel GEMV before it. Kernel tests at full shapes (the
# all-reduce epilogue with ranks simulated on one GPU), tp=1 decode steps with the form on and off in
# alternating pairs (logits compared), a profile of the batch-1 step, and the engine against transformers
# (fp32 greedy, now also each prompt alone, i.e. at batch 1).
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/gpu.log" 2>&1
step kernel_tests 240 python3 -m pytest -q -p no:cacheprovider -n 8 tests/kernels/test_kernel_gemv_fused.py \
    tests/kernels/test_kernel_gemv.py tests/kernels/test_kernel_elementwise.py
TP="python3 benchmarks/tp_decode.py --tp 1 --batch 1 64 --ctx 512 --iters 30 --mode graph"
LLM_CORE_ROW_FUSION=1 step fused_a 150 $TP --save-logits /tmp/fused.pt
LLM_CORE_ROW_FUSION=0 step unfused_a 150 $TP --save-logits /tmp/unfused.pt
LLM_CORE_ROW_FUSION=1 step fused_b 150 $TP
LLM_CORE_ROW_FUSION=0 step unfused_b 150 $TP
python3 scripts/device/compare_logits.py /tmp/unfused.pt /tmp/fused.pt >> "$OUT/fused_a.log" 2>&1
LLM_CORE_ROW_FUSION=1 step profile_fused 150 python3 benchmarks/profile_decode.py --tp 1 --batch 1 --out "$OUT/profile_tp1_fused.md"
LLM_CORE_ROW_FUSION=1 step engine_check 300 python3 scripts/device/gpu_engine_check.py --device cuda --out "$OUT/engine_check.json"
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
