#!/usr/bin/env bash
# nvidia-h200, session 3, last call: rotary + KV store as one kernel. Its kernel tests at full shapes,
# tp=1 decode steps with the fused op and with the two kernels it replaces (logits compared), then the
# engine against transformers (scripts/device/gpu_engine_check.py: fp32 greedy incl. chunked prefill and
# prefix cache, bf16 logits).
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
step kernel_tests 90 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_kernel_rotary_store.py
TP="python3 benchmarks/tp_decode.py --tp 1 --batch 1 64 --ctx 512 --iters 30 --mode graph"
step tp_decode_fused 60 $TP --save-logits /tmp/fused.pt
step tp_decode_two_kernels 60 $TP --two-kernel-rotary --save-logits /tmp/two.pt
python3 scripts/device/compare_logits.py /tmp/fused.pt /tmp/two.pt >> "$OUT/tp_decode_two_kernels.log" 2>&1
step engine_check 280 python3 scripts/device/gpu_engine_check.py --device cuda --out "$OUT/engine_check.json"
