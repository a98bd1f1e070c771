#!/usr/bin/env bash
# nvidia-h200-x2: the tp=2 == tp=1 engine check with CUDA graphs at tp=2 (NCCL all-reduce), then the
# same with the experimental symmetric-memory all-reduce, with crash stacks of the workers.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 LLM_CORE_DUMP_STACKS_S=90
python3 -c 'import transformers, sklearn' 2>/dev/null  # warm the page cache: the workers import these
start=$(date +%s)
timeout 420 python3 scripts/device/gpu_tp_check.py --symm-mem 2>&1 | tee "$OUT/tp_check.log"
echo "tp_check: $(( $(date +%s) - start )) s" | tee -a "$OUT/tp_check.log"
