#!/usr/bin/env bash
# Run on the 2-GPU machine (device kind nvidia-h200-x2) from the repository root:
# the Llama-3-8B-shaped decode latency benchmark at tp=1 and tp=2 (eager and CUDA graphs, all-reduce
# through the symmetric-memory one-shot and through NCCL only), then the tp=2 == tp=1 greedy check.
# Every step tees into $OUT, so a step cut off by its time limit still leaves what it printed.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export LLM_DUMP_STACKS_S="${LLM_DUMP_STACKS_S:-45}"  # Python stacks of every rank while it runs long
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpus.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/gpus.txt"
start=$(date +%s)
timeout "${TP_DECODE_TIMEOUT:-300}" python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 20 \
    --mode eager graph eager_nccl graph_nccl --out "$OUT/tp_decode.json" 2>&1 | tee "$OUT/tp_decode.log"
echo "tp_decode: $(( $(date +%s) - start )) s" | tee -a "$OUT/tp_decode.log"
if [ "${TP_CHECK_TIMEOUT:-220}" != 0 ]; then
    start=$(date +%s)
    timeout "${TP_CHECK_TIMEOUT:-220}" python3 scripts/device/gpu_tp_check.py 2>&1 | tee "$OUT/tp_check.log"
    echo "tp_check: $(( $(date +%s) - start )) s" | tee -a "$OUT/tp_check.log"
fi
