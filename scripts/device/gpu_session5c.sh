#!/usr/bin/env bash
# nvidia-h200, session 5, third call: the fused-GEMV kernel tests at full shapes, which timed out in the
# first two calls: the norm and residual forms first, then the simulated-rank all-reduce tests one by one
# with PDL on and off (a hang there spins the GPU and stalls every other test).
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
T=tests/kernels/test_kernel_gemv_fused.py
LLM_CORE_ROW_FUSION=1 step norm_residual 120 python3 -m pytest -q -p no:cacheprovider -n 6 $T -k "not all_reduce"
ONE="$T::test_linear_all_reduce_add[None-dtype2-2]"  # fp32, the tuned config, two ranks
step ar_one 45 python3 -m pytest -q -p no:cacheprovider -x "$ONE" -v
LLM_CORE_PDL=0 step ar_one_nopdl 45 python3 -m pytest -q -p no:cacheprovider -x "$ONE" -v
LLM_CORE_PDL=0 step ar_all_nopdl 90 python3 -m pytest -q -p no:cacheprovider -n 6 $T -k "all_reduce"
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
