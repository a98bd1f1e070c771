#!/usr/bin/env bash
# nvidia-h200-x2: decode step time through the whole engine (router, runner with CUDA graphs, sampler,
# outputs) at tp=1 and tp=2, next to ModelRunner.forward alone (tp_decode.py) in the same call: the
# difference is the per-step host work. Llama-3-8B-shaped dummy weights, bf16. Results in $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
timeout 240 python3 benchmarks/engine_decode.py --tp 1 2 --batch 1 64 --out "$OUT/engine_decode.json" 2>&1 \
    | tee "$OUT/engine_decode.log"
timeout 200 python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --mode graph \
    --out "$OUT/tp_decode.json" 2>&1 | tee "$OUT/tp_decode.log"
