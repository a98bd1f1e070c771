#!/usr/bin/env bash
# Our server, then LightLLM v1.2.0, with the anchor kit (../shared/anchor) in ONE device call, each step under
# its own deadline, plus a profile of our serving processes while W1 runs (serving_profile.py). A failed
# first request stops the call after ~2 minutes instead of hanging it (the kit's driver has no timeout).
#   run: bash scripts/device/side_by_side.sh [workloads, default warmup,LAT,W1,W2]
#   two pairs in one call (LightLLM's W1 moves 5.7-6.8k tok/s between runs; one pair takes ~4 min on an H200):
#   export CALL_T0=$(date +%s); for i in 1 2; do OUT=$OUT/pair$i BUDGET=$((295 * i)) \
#     bash scripts/device/side_by_side.sh warmup,W1,W2; done
#   BUDGET: the second of the call by which this run must end (default 570), counted from CALL_T0 (default: now)
#   carry: [".anchor/bin", ".anchor/ours", ".anchor/lightllm", ".device/pyspy"]   timeout_s: 600
#   (+ ".device/openai-whl": tritonclient in our venv, and W1 once more over gRPC streaming with
#   clients/bench_serving.py after the kit's workloads: HTTP generate_stream against gRPC on one server)
# Back in $OUT: compare.txt and side_by_side.tgz holding ours/ (serving_profile.sh's files: bench.json, metrics,
# logs, profile/), lightllm_bench.json, lightllm_env.txt. Needs `bash ../shared/anchor/make_kit.sh` here first; py-spy
# for the profile: `pip download py-spy -d .device/pyspy` (without it the profile has CPU figures only).
set -uo pipefail
OUT=${OUT:-/tmp/side_by_side}; mkdir -p "$OUT/ours"
W=${1:-warmup,LAT,W1,W2}
T0=$(date +%s)
CALL_T0=${CALL_T0:-$T0}  # the device call's start: BUDGET is counted from it
BUDGET=${BUDGET:-570}
elapsed() { echo $(($(date +%s) - T0)); }
say() { echo "[side_by_side +$(elapsed)s] $*"; }
# The device tool returns at most 8 files from $OUT: everything goes back as one archive beside compare.txt.
pack() {
  (cd "$OUT" && tar czf /tmp/side_by_side.tgz . && find . -mindepth 1 -depth ! -name compare.txt -delete \
    && mv /tmp/side_by_side.tgz .)
}
trap pack EXIT

source "$(dirname "$0")/_step.sh"
[ -d .device/openai-whl ] && use_client_wheels  # see scripts/device/README.md

# 1. Our server and its first requests: the kit's warm-up (8 requests) must all succeed.
R=/tmp/ours_res FRESH=1 DEADLINE=200 timeout 230 bash .anchor/bin/run_ours.sh warmup > "$OUT/ours/start.log" 2>&1
ok=$(python3 -c "import json; print(json.load(open('/tmp/ours_res/bench.json'))['warmup']['ok'])" 2> /dev/null)
if [ "$ok" != 8 ]; then
  say "our server did not answer its first requests (warmup ok=${ok:-none}); stopping"
  cp /tmp/ours_res/server.log /tmp/ours_res/driver.log "$OUT/ours/" 2> /dev/null
  tail -n 30 /tmp/ours_res/server.log
  R=/tmp/ours_res bash .anchor/bin/run_ours.sh stop > /dev/null 2>&1
  exit 1
fi
say "ours: warm-up ok"

# 2. Our workloads on the same server, profiled while W1 runs.
OUT=$OUT/ours FRESH=0 DEADLINE=240 bash scripts/device/serving_profile.sh "${W#warmup,}" > "$OUT/ours/profile_run.log" 2>&1
head -n 12 "$OUT/ours/profile/profile.txt" 2> /dev/null
grep -a "after warm-up" /tmp/ours_res/server.log | head -n 20
if [ -n "${VENV:-}" ] && [ "$(elapsed)" -lt 300 ]; then  # the same server, W1 over gRPC streaming
  timeout 120 "$VENV/bin/python" clients/bench_serving.py --workload W1 --url 127.0.0.1:8001 --no-progress \
    --out "$OUT/ours/w1_grpc.json" > "$OUT/ours/w1_grpc.log" 2>&1 || say "W1 over gRPC failed"
  python3 -c "import json, sys; g = json.load(open(sys.argv[1])); print(f\"ours W1 over gRPC (bench_serving.py): \
{g['output_token_throughput']:.0f} out tok/s, TTFT p50 {g['ttft_ms']['p50']:.0f} ms, ok {g['completed']}\")" \
    "$OUT/ours/w1_grpc.json" 2> /dev/null | tee "$OUT/grpc.txt"
fi
# The kit's 8 warm-up requests once more (same lengths, other words: no prefix-cache hits) on the now-warm
# server: what the 8 take in steady state, beside the first 8 after ready (issue 12's "ready means warm").
timeout 60 python3 .anchor/bin/bench_driver.py --api triton --url http://127.0.0.1:8000 --workloads warmup --seed 4321 \
  --out "$OUT/ours/warmup_again.json" > "$OUT/ours/warmup_again.log" 2>&1
python3 -c "import json, sys; w = json.load(open(sys.argv[1]))['warmup']; print(f\"ours: the 8 warm-up requests \
again, warm: TTFT mean {w['ttft_mean_s'] * 1e3:.0f} ms, ok {w['ok']}\")" "$OUT/ours/warmup_again.json" 2> /dev/null \
  | tee -a "$OUT/grpc.txt"
R=/tmp/ours_res bash .anchor/bin/run_ours.sh stop > /dev/null 2>&1
say "ours done"; tail -n 5 "$OUT/ours/run_ours.log"

# 3. LightLLM on the same machine, right after.
# LightLLM binds port 8000 without SO_REUSEADDR: wait until it can (what holds it goes to ports.txt).
for _ in $(seq 60); do
  python3 -c "import socket; socket.socket().bind(('127.0.0.1', 8000))" 2> /dev/null && break
  ss -tanp 2> /dev/null | grep ":8000 " | awk '{print $1, $4, $5, $6}' | sort | uniq -c | head -n 20 >> "$OUT/ports.txt"
  pgrep -af "tritonserver|llm_core" | cut -c1-160 | head -n 5 >> "$OUT/ports.txt"
  echo "--" >> "$OUT/ports.txt"; sleep 1
done
[ -s "$OUT/ports.txt" ] && say "port 8000 was busy after our server stopped: $(grep -c -- -- "$OUT/ports.txt") s (ports.txt)"
left=$((BUDGET - ($(date +%s) - CALL_T0)))
need=$((70 + 40 * $(tr ',' '\n' <<< "$W" | grep -cv '^warmup$')))  # its start (~50 s), then ~30 s a workload
if [ "$left" -lt "$need" ]; then say "no time left for LightLLM ($left s, needs ~$need)"; exit 2; fi
mkdir -p /tmp/ll_out
OUT=/tmp/ll_out STOP_OURS=1 timeout $((left - 10)) bash .anchor/bin/run_lightllm.sh "$W" none > "$OUT/lightllm_run.log" 2>&1
cp /tmp/ll_out/bench.json "$OUT/lightllm_bench.json" 2> /dev/null
cp /tmp/ll_out/env.txt "$OUT/lightllm_env.txt" 2> /dev/null
say "lightllm done"
python3 .anchor/bin/compare.py "$OUT/ours/bench.json" "$OUT/lightllm_bench.json" | tee "$OUT/compare.txt"
cat "$OUT/grpc.txt" >> "$OUT/compare.txt" 2> /dev/null

