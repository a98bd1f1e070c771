# Sourced by the checks in scripts/device/: results folder, environment, `step`, and `use_client_wheels`.
# NVLink multicast stays off on multi-GPU kinds (device KINDS.md); harmless on one GPU.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
step() {  # step NAME TIMEOUT CMD...: run, log to $OUT/NAME.log with its exit code and duration
    local name=$1 limit=$2; shift 2
    local start; start=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "[$name: rc $? in $(( $(date +%s) - start )) s]" | tee -a "$OUT/$name.log"
}
use_client_wheels() {  # the kit's venv (run_ours.sh) with tritonclient, FastAPI, uvicorn: .device/openai-whl
    mkdir -p /tmp/w && cp .anchor/ours/whl/*.whl .device/openai-whl/*.whl /tmp/w/
    export WHL_DIR=/tmp/w VENV=/tmp/venv_ours_openai
}
