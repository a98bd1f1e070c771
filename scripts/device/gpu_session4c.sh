#!/usr/bin/env bash
# nvidia-h200-x2, session 4, fourth call: PDL for the GEMV with no L2 prefetch (the default after the third
# call, where a 24 MB prefetch made steps slower) against small prefetches, alternating for the spread, the
# cuBLAS baseline in the same run, and a tp=2 profile with the defaults.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
TP="python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 --mode graph"
LLM_CORE_GEMV=0 step tp_decode_cublas 120 $TP
step tp_decode_pdl_a 120 $TP
LLM_CORE_GEMV_PREFETCH_MB=4 step tp_decode_prefetch4_a 120 $TP
step tp_decode_pdl_b 120 $TP
LLM_CORE_GEMV_PREFETCH_MB=4 step tp_decode_prefetch4_b 120 $TP
step profile_tp2 120 python3 benchmarks/profile_decode.py --tp 2 --batch 1 --ctx 512 --out "$OUT/profile_tp2.md"
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
