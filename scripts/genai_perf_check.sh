#!/usr/bin/env bash
# NVIDIA's genai-perf (with perf_analyzer) against our server, the three ways users point it at Triton:
#   triton      the `ensemble` model over gRPC streaming, TensorRT-LLM conventions
#               (genai-perf --endpoint-type kserve --backend tensorrtllm --streaming)
#   chat        the OpenAI API's /v1/chat/completions, streamed
#   completions the OpenAI API's /v1/completions, streamed
# It starts our server (the launcher, on free ports; the model: LLM_MODEL_DIR or the default tiny LLaVA), runs
# each profile, checks that every request succeeded and that the server generated exactly the tokens asked for
# (its llm_generation_tokens_total counter), prints genai-perf's figures and stops the server.
#
#   bash scripts/genai_perf_check.sh                   # 40 requests per profile, 4 at a time, 64 -> 32 tokens
#   REQUESTS=200 CONCURRENCY=16 ISL=512 OSL=128 bash scripts/genai_perf_check.sh
#
# genai-perf gets its own virtual environment (.genai-perf/venv, ~1 GB: pandas, plotly, transformers, ...):
# genai-perf 0.0.16, and perf_analyzer from the tritonclient 2.51.0 wheel (newer wheels need glibc 2.38 or
# ship no perf_analyzer). perf_analyzer loads libcudart.so.12 (pip's nvidia-cuda-runtime-cu12; no GPU used)
# and libb64 (Debian's libb64-0d, unpacked into .genai-perf/lib where the system has none).
# Artifacts (genai-perf's JSON/CSV exports): .genai-perf/artifacts/<profile>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GP="${GENAI_PERF_HOME:-$ROOT/.genai-perf}"
N="${REQUESTS:-40}" C="${CONCURRENCY:-4}" ISL="${ISL:-64}" OSL="${OSL:-32}"
die() { echo "genai_perf_check: $*" >&2; exit 1; }

bash "$ROOT/scripts/setup_env.sh" > /dev/null
PY="${LLM_VENV:-$ROOT/.venv}/bin/python"

# 1. genai-perf and perf_analyzer
if [ ! -x "$GP/venv/bin/perf_analyzer" ] || [ ! -x "$GP/venv/bin/genai-perf" ]; then
  mkdir -p "$GP"
  python3 -m venv "$GP/venv"
  "$GP/venv/bin/pip" install --disable-pip-version-check genai-perf==0.0.16 tritonclient==2.51.0 \
    nvidia-cuda-runtime-cu12 > "$GP/install.log" 2>&1 || { tail -n 20 "$GP/install.log"; die "pip install failed"; }
fi
cudart=$(echo "$GP"/venv/lib/python3*/site-packages/nvidia/cuda_runtime/lib)
export LD_LIBRARY_PATH="$GP/lib:$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$GP/venv/bin/perf_analyzer" | grep -q "libb64.* not found"; then
  command -v apt-get > /dev/null || die "perf_analyzer needs libb64.so.0d (Debian/Ubuntu: libb64-0d)"
  rm -rf "$GP/deb" && mkdir -p "$GP/deb" "$GP/lib"
  (cd "$GP/deb" && apt-get download -q libb64-0d > /dev/null 2>&1 && dpkg -x libb64-0d_*.deb root) \
    || die "could not fetch libb64-0d with apt-get download"
  cp "$GP"/deb/root/usr/lib/*/libb64.so.0d "$GP/lib/"
fi
"$GP/venv/bin/perf_analyzer" --version > /dev/null 2>&1 || { "$GP/venv/bin/perf_analyzer" --version; die "perf_analyzer does not run"; }
export PATH="$GP/venv/bin:$PATH"

# 2. our server
read -r HTTP GRPC METRICS OPENAI < <("$PY" -c "from llm_core.serving.server_process import free_ports; print(*free_ports(4))")
LOG="$GP/server.log"
"$PY" -m llm_core.serving.launcher --http-port "$HTTP" --grpc-port "$GRPC" --metrics-port "$METRICS" \
  --openai-port "$OPENAI" > "$LOG" 2>&1 &
SERVER=$!
stop_server() { kill -TERM "$SERVER" 2> /dev/null && wait "$SERVER" 2> /dev/null; true; }
trap stop_server EXIT
for _ in $(seq 600); do
  grep -q "ready  OpenAI" "$LOG" && break
  kill -0 "$SERVER" 2> /dev/null || { cat "$LOG"; die "the server exited"; }
  sleep 1
done
grep -q "ready  OpenAI" "$LOG" || { tail -n 30 "$LOG"; die "the server (with its OpenAI API) was not ready in 600 s"; }
MODEL_DIR=$(sed -n 's/^\[launcher\] model dir //p' "$LOG" | head -n 1)
SERVED=$(curl -sf "http://127.0.0.1:$OPENAI/v1/models" | "$PY" -c "import json, sys; print(json.load(sys.stdin)['data'][0]['id'])")
generated() { curl -sf "http://127.0.0.1:$METRICS/metrics" | awk '/^llm_generation_tokens_total/ {s += $2} END {print s + 0}'; }

# 3. the profiles: fixed lengths, so the server must generate exactly N * OSL tokens in each
common=(--tokenizer "$MODEL_DIR" --num-prompts "$N" --request-count "$N" --concurrency "$C"
  --synthetic-input-tokens-mean "$ISL" --synthetic-input-tokens-stddev 0
  --output-tokens-mean "$OSL" --output-tokens-stddev 0 --streaming)
rm -rf "$GP/artifacts" && mkdir -p "$GP/artifacts"
summary=()
for profile in triton chat completions; do
  case $profile in
    triton) args=(-m ensemble --endpoint-type kserve --backend tensorrtllm -u "127.0.0.1:$GRPC"
      --output-tokens-mean-deterministic) ;;  # min_length = max_tokens
    *) args=(-m "$SERVED" --endpoint-type "$profile" -u "127.0.0.1:$OPENAI" --extra-inputs "min_tokens:$OSL") ;;
  esac
  before=$(generated)
  echo "== genai-perf: $profile ($N requests, $C at a time, $ISL -> $OSL tokens)"
  (cd "$GP/artifacts" && genai-perf profile "${args[@]}" "${common[@]}" --artifact-dir "$profile" \
    > "$profile.log" 2>&1) || { tail -n 40 "$GP/artifacts/$profile.log"; die "genai-perf $profile failed"; }
  summary+=("$(python3 - "$GP/artifacts/$profile" "$profile" "$N" "$OSL" "$before" "$(generated)" << 'EOF'
import json, sys
from pathlib import Path
folder, profile, n, osl, before, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *map(float, sys.argv[5:])
m = json.loads(next(Path(folder).rglob("profile_export_genai_perf.json")).read_text())
ok = int(m["request_count"]["avg"])
made = int(after - before)
line = (f"{profile:12s} ok {ok}/{n}  server tokens {made} (asked {n * osl})  TTFT p50 {m['time_to_first_token']['p50']:.1f} ms"
        f"  ITL avg {m['inter_token_latency']['avg']:.2f} ms  {m['request_throughput']['avg']:.2f} req/s"
        f"  genai-perf OSL avg {m['output_sequence_length']['avg']:.1f}")
print(line)
if ok != n or made != n * osl:
    print(f"FAILED: {profile}: {ok} of {n} requests succeeded, the server generated {made} tokens", file=sys.stderr)
    sys.exit(1)
EOF
)") || die "$profile: check failed (artifacts: $GP/artifacts/$profile)"
done
echo "== genai-perf against $SERVED (${MODEL_DIR})"
printf '%s\n' "${summary[@]}"
echo "(genai-perf counts output tokens by tokenizing the streamed text again; on a random-weight model that"
echo " count differs from the server's, which generated exactly the tokens asked for)"
