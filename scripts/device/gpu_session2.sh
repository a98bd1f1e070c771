#!/usr/bin/env bash
# One call on nvidia-h200-x2: TP decode benchmark, the decode-attention sweep and L2 study on GPU 0,
# then the tp=2 == tp=1 greedy check. Results under $OUT.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export TP_DECODE_TIMEOUT=240 TP_CHECK_TIMEOUT=0   # tp_check runs last, below
bash scripts/device/gpu_tp.sh
start=$(date +%s)
CUDA_VISIBLE_DEVICES=0 timeout 110 python3 benchmarks/kernels.py --decode-sweep --out "$OUT/decode_sweep.md" 2>&1 | tee "$OUT/decode_sweep.log"
echo "decode sweep: $(( $(date +%s) - start )) s" | tee -a "$OUT/decode_sweep.log"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 LLM_CORE_DUMP_STACKS_S=45
start=$(date +%s)
timeout 220 python3 scripts/device/gpu_tp_check.py 2>&1 | tee "$OUT/tp_check.log"
echo "tp_check: $(( $(date +%s) - start )) s" | tee -a "$OUT/tp_check.log"
