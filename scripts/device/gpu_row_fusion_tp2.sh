#!/usr/bin/env bash
# nvidia-h200-x2 (not lent in session 5, which wrote this): the one-row layer form at tp=2, where each
# row-parallel GEMV all-reduces its output blocks with the peer in its epilogue (kernels/gemv.py
# linear_all_reduce_add) and each RMSNorm runs inside the next GEMV: no norm or all-reduce kernel per layer.
# Fused-GEMV kernel tests at full shapes, then tp=1 vs tp=2 decode steps with LLM_CORE_ROW_FUSION=1 against
# the default form in alternating pairs (logits compared: the same random weights per rank in every run),
# a tp=2 profile, and the engine's tp=2 == tp=1 greedy check with the form on.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
T=tests/kernels/test_kernel_gemv_fused.py
step kernel_tests 240 python3 -m pytest -q -p no:cacheprovider -n 6 $T -k "not all_reduce"
# The simulated-rank all-reduce cases in one process: under 6 workers on one GPU they stalled (session 5).
step kernel_tests_all_reduce 120 python3 -m pytest -q -p no:cacheprovider $T -k all_reduce
TP="python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 --mode graph"
step default_a 200 $TP --save-logits /tmp/default.pt
LLM_CORE_ROW_FUSION=1 step row_a 200 $TP --save-logits /tmp/row.pt
step default_b 200 $TP
LLM_CORE_ROW_FUSION=1 step row_b 200 $TP
python3 scripts/device/compare_logits.py /tmp/default.pt /tmp/row.pt >> "$OUT/row_a.log" 2>&1
LLM_CORE_ROW_FUSION=1 step profile_tp2 150 python3 benchmarks/profile_decode.py --tp 2 --batch 1 --out "$OUT/profile_tp2_row.md"
LLM_CORE_ROW_FUSION=1 step tp_check 300 python3 scripts/device/gpu_tp_check.py --quick
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
