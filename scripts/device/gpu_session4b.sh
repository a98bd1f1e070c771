#!/usr/bin/env bash
# nvidia-h200-x2, session 4, third call: programmatic dependent launch for the GEMV. The GEMV is launched
# with launch_pdl, prefetches its weights into L2 while the kernel before it (a norm, the fused all-reduce +
# norm, the attention reduce) runs, then waits for it. tp=1 vs tp=2 decode steps with PDL off, with PDL but
# no prefetch, and with both (logits must be identical: PDL changes no arithmetic), profiles, the changed
# kernels' tests at full shapes, the engine against transformers, and the tp=2 == tp=1 greedy check.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
TP="python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 --mode graph"
LLM_CORE_PDL=0 step tp_decode_nopdl 120 $TP --save-logits /tmp/nopdl.pt
LLM_CORE_GEMV_PREFETCH_MB=0 step tp_decode_pdl_noprefetch 120 $TP
step tp_decode_pdl 120 $TP --save-logits /tmp/pdl.pt
python3 scripts/device/compare_logits.py /tmp/nopdl.pt /tmp/pdl.pt >> "$OUT/tp_decode_pdl.log" 2>&1
LLM_CORE_GEMV=0 step tp_decode_cublas 120 $TP --save-logits /tmp/cublas.pt
python3 scripts/device/compare_logits.py /tmp/cublas.pt /tmp/pdl.pt >> "$OUT/tp_decode_cublas.log" 2>&1
step profile_tp2 120 python3 benchmarks/profile_decode.py --tp 2 --batch 1 --ctx 512 --out "$OUT/profile_tp2.md"
CUDA_VISIBLE_DEVICES=0 step profile_tp1 120 python3 benchmarks/profile_decode.py --batch 1 --ctx 512 \
    --out "$OUT/profile_tp1.md"
CUDA_VISIBLE_DEVICES=0 step engine_check 280 python3 scripts/device/gpu_engine_check.py --device cuda \
    --out /tmp/engine_check.json &
CUDA_VISIBLE_DEVICES=1 step kernel_tests 240 python3 -m pytest -q -p no:cacheprovider -n 8 \
    tests/kernels/test_kernel_gemv.py tests/kernels/test_kernel_elementwise.py \
    tests/kernels/test_kernel_attention.py tests/kernels/test_kernel_all_reduce_norm.py
wait
cp /tmp/engine_check.json "$OUT/" 2>/dev/null
step tp_check 150 python3 scripts/device/gpu_tp_check.py --quick
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
