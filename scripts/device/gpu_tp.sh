#!/usr/bin/env bash
# Run on the 2-GPU machine (device kind nvidia-h200-x2) from the repository root:
# tp=2 == tp=1 greedy check, then the Llama-3-8B-shaped decode latency benchmark.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
timeout 200 python3 scripts/device/gpu_tp_check.py 2>&1 | tee "$OUT/tp_check.log"
python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 20 --mode eager graph eager_nccl graph_nccl --out "$OUT/tp_decode.json" 2>&1 | tee "$OUT/tp_decode.log"
