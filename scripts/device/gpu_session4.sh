#!/usr/bin/env bash
# nvidia-h200-x2, session 4: the batch-1 decode GEMV kernel (llm_core/kernels/gemv.py).
# Sweep its launch configs against cuBLAS for a Llama-3-8B rank's shapes at tp=1 (GPU 0) and tp=2 (GPU 1)
# at once, merge the winners into the tuned table, then tp=1 vs tp=2 decode steps with the GEMV off and on
# (logits compared), profiles of both with the GEMV, the kernel tests at full shapes, and the engine's
# tp=2 == tp=1 greedy check. (The first call of session 4 ran an earlier multi-row form of this script.)
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
TABLE="llm_core/kernels/configs/gemv_$(python3 -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "_"))').json"
mkdir -p llm_core/kernels/configs
CUDA_VISIBLE_DEVICES=0 step sweep_tp1 420 python3 benchmarks/gemv.py --tp 1 --out "$OUT/sweep_tp1.md" \
    --write /tmp/tp1.json &
CUDA_VISIBLE_DEVICES=1 step sweep_tp2 420 python3 benchmarks/gemv.py --tp 2 --out "$OUT/sweep_tp2.md" \
    --write /tmp/tp2.json &
wait
python3 - "$TABLE" /tmp/tp1.json /tmp/tp2.json <<'PY' >> "$OUT/sweep_tp2.log" 2>&1
import json, sys
tables = [json.load(open(p)) for p in sys.argv[2:]]
merged = {"device": tables[0]["device"], "configs": {}}
for t in tables:
    merged["configs"].update(t["configs"])
merged["configs"] = dict(sorted(merged["configs"].items()))
open(sys.argv[1], "w").write(json.dumps(merged, indent=1) + "\n")
print("table:", sys.argv[1], len(merged["configs"]), "entries")
PY
cp "$TABLE" "$OUT/"
TP="python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 --mode graph"
LLM_CORE_GEMV=0 step tp_decode_cublas 120 $TP --save-logits /tmp/cublas.pt
step tp_decode_gemv 120 $TP --save-logits /tmp/gemv.pt
python3 scripts/device/compare_logits.py /tmp/cublas.pt /tmp/gemv.pt >> "$OUT/tp_decode_gemv.log" 2>&1
step tp_decode_gemv_again 120 $TP
step profile_tp2 120 python3 benchmarks/profile_decode.py --tp 2 --batch 1 --ctx 512 --out "$OUT/profile_tp2.md"
CUDA_VISIBLE_DEVICES=0 step profile_tp1 120 python3 benchmarks/profile_decode.py --batch 1 --ctx 512 \
    --out "$OUT/profile_tp1.md" &
CUDA_VISIBLE_DEVICES=1 step kernel_tests 240 python3 -m pytest -q -p no:cacheprovider -n 8 tests/kernels/test_kernel_gemv.py
wait
step tp_check 150 python3 scripts/device/gpu_tp_check.py --quick
# At most 8 files come back: the sweep tables, the tuned table, the profiles, and every log in one file.
for f in "$OUT"/*.log; do echo "=== $(basename "$f")"; cat "$f"; done > /tmp/all.log && rm "$OUT"/*.log && mv /tmp/all.log "$OUT/all.log"
