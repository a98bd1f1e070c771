#!/usr/bin/env bash
# What the OpenAI API costs on W1 (issue 15: at most 5% more wall time than through Triton's ensemble): our
# server started by the anchor kit with FastAPI, uvicorn and tritonclient in its venv, then W1 through the
# ensemble over HTTP, through /v1/completions (streamed), over HTTP again, and over gRPC streaming.
#   run: bash scripts/device/openai_overhead.sh      carry: [".anchor/bin", ".anchor/ours", ".device/openai-whl"]
# .device/openai-whl: see scripts/device/README.md (pip download fastapi uvicorn for cp312). ~5 min.
set -uo pipefail
OUT=${OUT:-/tmp/openai_overhead}; mkdir -p "$OUT"
source "$(dirname "$0")/_step.sh"
use_client_wheels
R=/tmp/ours_res DEADLINE=200 timeout 230 \
  bash .anchor/bin/run_ours.sh warmup > "$OUT/start.log" 2>&1
cp /tmp/ours_res/server.log "$OUT/" 2> /dev/null
if ! curl -sf -m 5 http://127.0.0.1:9000/health > /dev/null; then
  echo "the OpenAI API is not up"; tail -n 20 "$OUT/start.log" "$OUT/server.log"; exit 1
fi
# The kit's W1 over HTTP generate_stream, over the OpenAI API, over HTTP again (the run-to-run spread, and no
# order effect on the comparison), then clients/bench_serving.py's W1 over gRPC streaming (what the OpenAI
# server itself uses to reach the ensemble).
for run in triton openai triton2; do
  api=${run%2}; url=http://127.0.0.1:8000; model=ensemble
  [ "$api" = openai ] && url=http://127.0.0.1:9000 && model=$(basename "${MODEL_DIR:-/tmp/llama8b}")
  timeout 200 python3 .anchor/bin/bench_driver.py --api "$api" --url "$url" --model "$model" --workloads W1 \
    --out "$OUT/w1_$run.json" > "$OUT/w1_$run.log" 2>&1 || echo "W1 over $run failed: $(tail -n 3 "$OUT/w1_$run.log")"
done
timeout 200 "$VENV/bin/python" clients/bench_serving.py --workload W1 --url 127.0.0.1:8001 \
  --no-progress --out "$OUT/w1_grpc.json" > "$OUT/w1_grpc.log" 2>&1 || echo "W1 over gRPC failed: $(tail -n 3 "$OUT/w1_grpc.log")"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
out = sys.argv[1]
rows = {run: json.load(open(f"{out}/w1_{run}.json"))["W1"] for run in ("triton", "openai", "triton2")}
for run, r in rows.items():
    print(f"{run:8s} n={r['ok']}/{r['requests']} dur={r['duration_s']:.2f}s out_tok/s={r['output_tok_per_s']:.0f} "
          f"ttft_p50={r['ttft_p50_s'] * 1e3:.0f}ms tpot={r['tpot_mean_ms']:.2f}ms")
if os.path.exists(f"{out}/w1_grpc.json"):  # bench_serving's own W1 (its prompts, same length distribution)
    g = json.load(open(f"{out}/w1_grpc.json"))
    print(f"grpc     n={g['completed']}/{g['completed'] + g['failed']} dur={g['duration_s']:.2f}s "
          f"out_tok/s={g['output_token_throughput']:.0f} ttft_p50={g['ttft_ms']['p50']:.0f}ms "
          f"tpot_p50={g['tpot_ms']['p50']:.2f}ms  (bench_serving.py, its own prompts)")
base = (rows["triton"]["duration_s"] + rows["triton2"]["duration_s"]) / 2
extra = rows["openai"]["duration_s"] / base - 1
print(f"OpenAI API: {extra * 100:+.1f}% W1 wall time against the ensemble over HTTP (mean of the two runs; "
      f"target <= +5%)")
PY
bash .anchor/bin/run_ours.sh stop > /dev/null 2>&1
