#!/usr/bin/env bash
# nvidia-h200-x2, session 4, last call: PDL also for the kernels that follow a GEMV (RMSNorm, the fused
# all-reduce + norm, rotary + KV store), which wait at the top of their body. Alternating pairs against
# PDL for the GEMV only (LLM_CORE_PDL_FOLLOWERS=0), one run with PDL off, logits compared (PDL changes no
# arithmetic), and the changed kernels' tests at full shapes.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
TP="python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 --mode graph"
step followers_a 120 $TP --save-logits /tmp/followers.pt
LLM_CORE_PDL_FOLLOWERS=0 step gemv_only_a 120 $TP --save-logits /tmp/gemv_only.pt
step followers_b 120 $TP
LLM_CORE_PDL_FOLLOWERS=0 step gemv_only_b 120 $TP
LLM_CORE_PDL=0 step nopdl 120 $TP --save-logits /tmp/nopdl.pt
python3 scripts/device/compare_logits.py /tmp/gemv_only.pt /tmp/followers.pt >> "$OUT/followers_a.log" 2>&1
python3 scripts/device/compare_logits.py /tmp/nopdl.pt /tmp/followers.pt >> "$OUT/nopdl.log" 2>&1
step kernel_tests 100 python3 -m pytest -q -p no:cacheprovider -n 8 tests/kernels/test_kernel_rotary_store.py \
    tests/kernels/test_kernel_elementwise.py tests/kernels/test_kernel_all_reduce_norm.py
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
