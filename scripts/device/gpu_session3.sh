#!/usr/bin/env bash
# nvidia-h200-x2, session 3, first call: the fused all-reduce + residual add + RMSNorm kernel
# (kernel tests at full shapes with the ranks simulated on one GPU, while GPU 1 sweeps decode-attention
# splits at small grids), then tp=1 vs tp=2 decode steps with the fused kernel (engine default) and
# without it, the same with shorter decode splits, and a per-kernel profile of a tp=2 step (rank 0).
# Every step writes into $OUT (at most 8 files come back).
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
{ date -u; nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } > "$OUT/env.log" 2>&1
CUDA_VISIBLE_DEVICES=0 step fused_kernel_tests 150 python3 -m pytest -q -p no:cacheprovider \
    tests/kernels/test_kernel_all_reduce_norm.py &
CUDA_VISIBLE_DEVICES=1 step small_grid 150 python3 benchmarks/kernels.py --small-grid &
wait
step tp_decode 200 python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 \
    --mode eager graph graph_nofuse
step tp_decode_split64 130 python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 \
    --mode graph --decode-min-split-len 64
step profile_tp2 110 python3 benchmarks/profile_decode.py --tp 2 --batch 1 64 --out "$OUT/profile_tp2.md"
