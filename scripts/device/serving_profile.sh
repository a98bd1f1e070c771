#!/usr/bin/env bash
# Our server under the anchor kit's load, profiled: CPU cores busy per process (tritonserver, each Python
# stub, the engine workers, the load generator) and py-spy profiles of the llm stub, engine rank 0 and
# postprocess while W1 runs (scripts/device/serving_profile.py), plus the kit's bench.json and metrics.
# Needs the kit in .anchor/ (../shared/anchor/make_kit.sh) and, for the profiles, a py-spy wheel in .device/pyspy/:
#   run: bash scripts/device/serving_profile.sh [workloads, default warmup,W1]
#   (PROFILE=LAT profiles LAT instead of W1; PROFILE_DELAY / PROFILE_DURATION: the window, seconds)
#   carry: [".anchor/bin", ".anchor/ours", ".device/pyspy"]
set -uo pipefail
OUT=${OUT:-/tmp/serving_profile}; mkdir -p "$OUT"
W=${1:-warmup,W1}
ls .device/pyspy/py_spy-*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-deps .device/pyspy/py_spy-*.whl >/dev/null 2>&1
python3 scripts/device/serving_profile.py --wait-for "bench_driver.py --api triton --url http://127.0.0.1:8000 --workloads ${PROFILE:-W1}" \
  --delay "${PROFILE_DELAY:-6}" --duration "${PROFILE_DURATION:-8}" --out "$OUT/profile" &
prof=$!
DEADLINE=${DEADLINE:-520}
R=/tmp/ours_res FRESH=${FRESH:-1} DEADLINE=$DEADLINE timeout $((DEADLINE + 40)) bash .anchor/bin/run_ours.sh "$W" > "$OUT/run_ours.log" 2>&1
tail -5 "$OUT/run_ours.log"
kill $prof 2>/dev/null; wait $prof 2>/dev/null
for f in bench.json metrics.txt keylines.txt driver.log env.txt server.log; do cp /tmp/ours_res/$f "$OUT/" 2>/dev/null; done
cat "$OUT/profile/profile.txt" 2>/dev/null | head -80
