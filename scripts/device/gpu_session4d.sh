#!/usr/bin/env bash
# nvidia-h200-x2, session 4, last call: fp16 at tp=2 (never run on two GPUs before): the Llama-3-8B-shaped
# dummy model in float16, tp=1 and tp=2, eager and graphs (fused all-reduce + norm and GEMV in fp16): graph
# logits against eager, the fused kernel against NCCL + norm. (Dummy weights are drawn per rank, so tp=2 and
# tp=1 logits are different models here: tp=2 == tp=1 is scripts/device/gpu_tp_check.py's job.)
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
step tp_decode_fp16 150 python3 benchmarks/tp_decode.py --dtype float16 --tp 1 2 --batch 1 64 --ctx 512 \
    --iters 20 --mode eager graph
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
