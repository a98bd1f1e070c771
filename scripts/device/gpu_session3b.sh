#!/usr/bin/env bash
# nvidia-h200-x2, session 3, second call (after the first call's fixes: `.cg` peer loads in the fused
# kernel, decode splits down to one key block): fused-kernel tests at full shapes (GPU 0) next to a
# tp=1 step profile (GPU 1); tp=1 vs tp=2 decode steps with the fused all-reduce + RMSNorm (engine
# default) and without (`graph_nofuse`); the same with the old decode split rule (256 keys at the
# least); a tp=2 profile; and the engine's tp=2 == tp=1 greedy check (tiny Llama, fp32, defaults).
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
CUDA_VISIBLE_DEVICES=0 step fused_kernel_tests 150 python3 -m pytest -q -p no:cacheprovider \
    tests/kernels/test_kernel_all_reduce_norm.py tests/kernels/test_kernel_attention.py -k "all_reduce or decode" &
CUDA_VISIBLE_DEVICES=1 step profile_tp1 110 python3 benchmarks/profile_decode.py --tp 1 --batch 1 64 --out "$OUT/profile_tp1.md" &
wait
step tp_decode 200 python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 \
    --mode eager graph graph_nofuse
step tp_decode_split256 130 python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 \
    --mode graph --decode-min-split-len 256
step profile_tp2 110 python3 benchmarks/profile_decode.py --tp 2 --batch 1 64 --out "$OUT/profile_tp2.md"
step tp_check 150 python3 scripts/device/gpu_tp_check.py --quick
