#!/usr/bin/env bash
# GPU machine, issue 17: the README setup and launcher over the machine's preinstalled python
# (/opt/torch/.venv: torch 2.11 cu130, numpy 2, scipy, scikit-learn, transformers), offline.
#   CPU machine first:  bash scripts/make_wheelhouse.sh            (writes .whl/wheelhouse.tar.xz)
#   run  command   = bash scripts/device/gpu_setup_check.sh
#        carry     = [".whl"]          timeout_s = 600
# Steps (each logged to $OUT/gpu_setup_check.log, rerunnable: a call cut short is repeated and
# finished steps are skipped while the machine is warm):
#  1. facts: GPU, host python, its torch/numpy, `pip list` ($OUT/host_pip_list.txt);
#  2. PYTHON=<host python> LLM_WHEELS=<unpacked .whl> LLM_EXTRAS=serve bash scripts/setup_env.sh:
#     the project venv (.venv) must reuse the host's torch (its realpath in the host env), hold
#     numpy 1.x and pass env_check (no hand-made site-packages);
#  3. the 8B-shaped random model (scripts/device/make_llama8b.py, on the GPU, ~25 s);
#  4. `bash scripts/serve.sh --device cuda --model-dir /tmp/llama8b` started detached, waited for;
#  5. a streaming request (clients/grpc_stream.py), which numpy/libpython each stub mapped;
#  6. the server stopped (KEEP=1 leaves it running for a next call).
# Exit: 0 all good, 1 setup failed, 2 server not ready in time (rerun), 3 server died, 4 request failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
ROOT=$PWD
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
LOG=$OUT/gpu_setup_check.log
W=/tmp/llm_setup_check; mkdir -p "$W"
HOST_PY="${PYTHON:-/opt/torch/.venv/bin/python}"
[[ -x "$HOST_PY" ]] || HOST_PY="$(command -v python3)"
MODEL=/tmp/llama8b
DEADLINE="${DEADLINE:-540}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }
ready() { "$HOST_PY" -c 'import sys, urllib.request as u
try: sys.exit(u.urlopen("http://127.0.0.1:8000/v2/health/ready", timeout=3).status != 200)
except Exception: sys.exit(1)'; }
finish() {
  cp "$W"/server.log "$OUT/server.log" 2>/dev/null
  grep -aE "Traceback|Error|error|failed|numpy|ready|launcher" "$W/server.log" 2>/dev/null | cut -c1-400 \
    | head -200 > "$OUT/server_keylines.txt"
  exit "$1"
}

# 1. facts
log "host python $HOST_PY; checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{ nvidia-smi -L; "$HOST_PY" -c 'import sys, torch, numpy; print(sys.version); print("torch", torch.__version__,
  torch.version.cuda, torch.__file__); print("numpy", numpy.__version__)'; } 2>&1 | tee -a "$LOG"
"$HOST_PY" -m pip list > "$OUT/host_pip_list.txt" 2>&1

# 2. setup (the README's, offline from the carried wheels)
if [[ ! -d "$W/wheels" ]]; then
  [[ -f .whl/wheelhouse.tar.xz ]] || { log "no .whl/wheelhouse.tar.xz: run scripts/make_wheelhouse.sh, carry .whl"; finish 1; }
  mkdir -p "$W/wheels.tmp" && tar -xJf .whl/wheelhouse.tar.xz -C "$W/wheels.tmp" && mv "$W/wheels.tmp" "$W/wheels"
fi
log "setup_env.sh (PYTHON=$HOST_PY LLM_WHEELS=$W/wheels LLM_EXTRAS=serve)"
if ! PYTHON="$HOST_PY" LLM_WHEELS="$W/wheels" LLM_EXTRAS=serve bash scripts/setup_env.sh > "$OUT/setup.log" 2>&1; then
  tail -30 "$OUT/setup.log" | tee -a "$LOG"; log "SETUP FAILED"; finish 1
fi
tee -a "$LOG" < "$OUT/setup.log"
VPY=$ROOT/.venv/bin/python
"$VPY" - "$HOST_PY" <<'EOF' 2>&1 | tee -a "$LOG"
import os, subprocess, sys, sysconfig
import numpy, torch
host = subprocess.run([sys.argv[1], "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                      capture_output=True, text=True).stdout.strip()
torch_file = os.path.realpath(torch.__file__)
own = os.path.isdir(os.path.join(sysconfig.get_paths()["purelib"], "torch"))
print(f"venv: torch {torch.__version__} cuda={torch.cuda.is_available()} from {torch_file}")
print(f"venv: numpy {numpy.__version__} from {numpy.__file__}")
print(f"CHECK torch from host env ({host}): {torch_file.startswith(os.path.realpath(host))}; own torch: {own}")
EOF

# 3. model
if [[ ! -f "$MODEL/model.safetensors.index.json" ]]; then
  log "building $MODEL"
  "$VPY" scripts/device/make_llama8b.py --out "$MODEL" > "$OUT/make_model.log" 2>&1 || { log "make_model failed"; finish 1; }
  log "$(tail -1 "$OUT/make_model.log")"
fi

# 4. server (README command), detached so that a call cut short can be repeated
SHM_G=$(df -BG --output=size /dev/shm 2>/dev/null | tail -1 | tr -dc 0-9)
if [[ -z "$SHM_G" || "$SHM_G" -lt 16 ]]; then mount -o remount,size=32G /dev/shm 2>> "$LOG"; fi
SPID=$(cat "$W/server.pid" 2>/dev/null)
if ! ready && ! { [[ -n "$SPID" ]] && kill -0 "$SPID" 2>/dev/null; }; then
  log "starting: bash scripts/serve.sh --device cuda --model-dir $MODEL --max-model-len 8192"
  PYTHON="$HOST_PY" LLM_WHEELS="$W/wheels" LLM_EXTRAS=serve setsid nohup bash scripts/serve.sh --device cuda \
    --model-dir "$MODEL" --max-model-len 8192 > "$W/server.log" 2>&1 < /dev/null &
  SPID=$!; echo "$SPID" > "$W/server.pid"; date +%s > "$W/server.t0"
fi
until ready; do
  kill -0 "$SPID" 2>/dev/null || { tail -60 "$W/server.log" | tee -a "$LOG"; log "SERVER DIED"; rm -f "$W/server.pid"; finish 3; }
  if (( SECONDS > DEADLINE )); then log "not ready yet after $(( $(date +%s) - $(cat "$W/server.t0") ))s: rerun"; finish 2; fi
  sleep 3
done
log "server ready $(( $(date +%s) - $(cat "$W/server.t0") ))s after start"

# 5. a streaming request; what each stub loaded
"$VPY" clients/grpc_stream.py "w1 w2 w3 w4 w5 w6 w7 w8" --max-tokens 64 > "$OUT/request.log" 2>&1
RC=$?
tee -a "$LOG" < "$OUT/request.log"
for p in $(pgrep -f triton_python_backend_stub); do
  log "stub $p $(tr '\0' ' ' < "/proc/$p/cmdline" | cut -d' ' -f2 | sed 's#.*/model_repository/##'):" \
    "$(grep -oE '/[^ ]*(_multiarray_umath[^ /]*\.so|libpython[0-9.]+\.so[.0-9]*)$' "/proc/$p/maps" | sort -u | tr '\n' ' ')"
done
[[ $RC == 0 ]] && log "REQUEST OK" || log "REQUEST FAILED (rc $RC)"

# 6. stop
if [[ "${KEEP:-0}" != 1 ]]; then
  kill -TERM "$SPID" 2>/dev/null
  for _ in $(seq 45); do kill -0 "$SPID" 2>/dev/null || break; sleep 1; done
  rm -f "$W/server.pid"; log "server stopped"
fi
[[ $RC == 0 ]] && finish 0 || finish 4
