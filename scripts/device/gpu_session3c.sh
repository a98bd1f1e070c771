#!/usr/bin/env bash
# nvidia-h200-x2, session 3, third call: the fused all-reduce + RMSNorm kernel with monotonic epoch
# flags (no compare-and-swap round trips): kernel tests (ranks simulated on GPU 0), the fused vs
# two-kernel row sweep with a bit-exactness stress check on 2 GPUs, tp=1 vs tp=2 decode steps
# (fused default, and `graph_nofuse`), a tp=2 profile, and the engine's tp=2 == tp=1 greedy check.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
CUDA_VISIBLE_DEVICES=0 step fused_kernel_tests 100 python3 -m pytest -q -p no:cacheprovider \
    tests/kernels/test_kernel_all_reduce_norm.py
step all_reduce 120 python3 benchmarks/all_reduce.py --rows 1 2 4 8 16 32 64 --out "$OUT/all_reduce.md"
step tp_decode 200 python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 \
    --mode eager graph graph_nofuse
step profile_tp2 100 python3 benchmarks/profile_decode.py --tp 2 --batch 1 64 --out "$OUT/profile_tp2.md"
step tp_check 150 python3 scripts/device/gpu_tp_check.py --quick
