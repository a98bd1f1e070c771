#!/usr/bin/env bash
# nvidia-h200-x2, session 4, last call: fp16 at tp=2 (never run on two GPUs before): the Llama-3-8B-shaped
# dummy model in float16, tp=1 and tp=2, eager and graphs (fused all-reduce + norm and GEMV in fp16), with
# tp=2 logits compared to tp=1.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
step tp_decode_fp16 150 python3 benchmarks/tp_decode.py --dtype float16 --tp 1 2 --batch 1 64 --ctx 512 \
    --iters 20 --mode eager graph --save-logits /tmp/fp16.pt
python3 - /tmp/fp16.pt <<'PY' >> "$OUT/tp_decode_fp16.log" 2>&1
import sys, torch
saved = torch.load(sys.argv[1])
for key in sorted(k for k in saved if k.startswith("tp1_")):
    a, b = saved[key].float(), saved["tp2_" + key[4:]].float()
    rel = ((a - b).norm(dim=-1) / a.norm(dim=-1)).max().item()
    print(f"{key[4:]}: tp2 vs tp1 finite={bool(torch.isfinite(b).all())} max relative row diff {rel:.3g}, "
          f"same argmax in {(a.argmax(-1) == b.argmax(-1)).float().mean().item():.0%} of rows")
PY
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
