#!/usr/bin/env bash
# nvidia-h200-x2, session 3, fifth call: programmatic dependent launch (PDL) for our Triton kernels.
# Kernel tests at full shapes with PDL on (GPU 0), then tp=1 and tp=2 decode steps with PDL on, off
# (LLM_CORE_PDL=0) and on again, each saving its logits; on and off must give identical logits.
# PDL was removed afterwards (no measurable gain, benchmarks/RESULTS.md); this script needs commit
# b244e2e to run as it did.
source "$(dirname "${BASH_SOURCE[0]}")/_step.sh"
CUDA_VISIBLE_DEVICES=0 step kernel_tests_pdl 150 python3 -m pytest -q -x -p no:cacheprovider -n 4 tests/kernels
TP="python3 benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --iters 30 --mode eager graph"
step tp_decode_pdl 100 $TP --save-logits /tmp/pdl_on.pt
step tp_decode_nopdl 100 env LLM_CORE_PDL=0 $TP --save-logits /tmp/pdl_off.pt
step tp_decode_pdl_again 100 $TP
python3 scripts/device/compare_logits.py /tmp/pdl_on.pt /tmp/pdl_off.pt > "$OUT/compare_logits.log" 2>&1
