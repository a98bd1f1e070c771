#!/usr/bin/env bash
# What the OpenAI API costs on W1 (issue 15: at most 5% more wall time than through Triton's ensemble): our
# server started by the anchor kit with FastAPI and uvicorn in its venv, then the kit's W1 through the
# ensemble (--api triton) and through /v1/completions (--api openai, streamed), one after the other.
#   run: bash scripts/device/openai_overhead.sh      carry: [".anchor/bin", ".anchor/ours", ".device/openai-whl"]
# .device/openai-whl: see scripts/device/README.md (pip download fastapi uvicorn for cp312). ~5 min.
set -uo pipefail
OUT=${OUT:-/tmp/openai_overhead}; mkdir -p "$OUT"
mkdir -p /tmp/w && cp .anchor/ours/whl/*.whl .device/openai-whl/*.whl /tmp/w/
WHL_DIR=/tmp/w VENV=/tmp/venv_ours_openai R=/tmp/ours_res DEADLINE=200 timeout 230 \
  bash .anchor/bin/run_ours.sh warmup > "$OUT/start.log" 2>&1
cp /tmp/ours_res/server.log "$OUT/" 2> /dev/null
if ! curl -sf -m 5 http://127.0.0.1:9000/health > /dev/null; then
  echo "the OpenAI API is not up"; tail -n 20 "$OUT/start.log" "$OUT/server.log"; exit 1
fi
for api in triton openai; do
  url=http://127.0.0.1:8000; model=ensemble
  [ "$api" = openai ] && url=http://127.0.0.1:9000 && model=$(basename "${MODEL_DIR:-/tmp/llama8b}")
  timeout 200 python3 .anchor/bin/bench_driver.py --api "$api" --url "$url" --model "$model" --workloads W1 \
    --out "$OUT/w1_$api.json" > "$OUT/w1_$api.log" 2>&1 || echo "W1 over $api failed: $(tail -n 3 "$OUT/w1_$api.log")"
done
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys
out = sys.argv[1]
rows = {api: json.load(open(f"{out}/w1_{api}.json"))["W1"] for api in ("triton", "openai")}
for api, r in rows.items():
    print(f"{api:7s} n={r['ok']}/{r['requests']} dur={r['duration_s']:.2f}s out_tok/s={r['output_tok_per_s']:.0f} "
          f"ttft_p50={r['ttft_p50_s'] * 1e3:.0f}ms tpot={r['tpot_mean_ms']:.2f}ms")
extra = rows["openai"]["duration_s"] / rows["triton"]["duration_s"] - 1
print(f"OpenAI API: {extra * 100:+.1f}% W1 wall time against the ensemble (target <= +5%)")
PY
bash .anchor/bin/run_ours.sh stop > /dev/null 2>&1
