#!/usr/bin/env bash
# Served A/B: our server from another tree (A) and from this checkout (B), alternated A, B, A, B, ... with a fresh
# server start for every run, the anchor kit's workloads on each. A served difference of under ~1 ms in LAT's TTFT
# is smaller than what one tree moves between two starts on the same machine (benchmarks/RESULTS.md), so a hot-path
# change is judged on several alternated starts, never on one pair. Fresh starts also keep a run from hitting the
# prefix cache the run before filled (the kit sends the same prompts again: LAT's TTFT drops by ~6 ms).
#   A's tree: mkdir -p .device/a && git archive <rev> | tar x -C .device/a   (an ignored folder, carried)
#   run: bash scripts/device/served_ab.sh .device/a [workloads, default warmup,LAT] [rounds, default 3]
#   carry: [".anchor/bin", ".anchor/ours", ".device/a"]   timeout_s: 600 (warmup,LAT: ~65 s a run on an H100)
#   A_ENV / B_ENV: LLM_* settings for one side only (e.g. B_ENV="LLM_CUDA_GRAPH_MAX_TOKENS=0"); with A = . the same
#   tree against itself under two settings.
# Back in $OUT: ab.txt (run_ours.sh's summary line of each workload of each run, then the mean per side) and
# served_ab.tgz (each run's bench.json as <side>_<round>.json and its log; the device tool returns at most 8 files).
# The kit's run_ours.sh variables (N, BENCH_ARGS, DEVICE, MODEL_DIR, ports, ...) pass through: see its header.
set -uo pipefail
A_TREE=${1:?usage: served_ab.sh A_TREE [workloads] [rounds]}
W=${2:-warmup,LAT}
ROUNDS=${3:-3}
OUT=${OUT:-/tmp/served_ab}; mkdir -p "$OUT"
RUNS=$(mktemp -d)  # per-run files, packed into $OUT at the end
trap 'tar czf "$OUT/served_ab.tgz" -C "$RUNS" . && rm -rf "$RUNS"' EXIT
A_TREE=$(cd "$A_TREE" && pwd)
B_TREE=$PWD
[ -d "$B_TREE/.anchor/bin" ] || { echo "no .anchor/bin here: bash ../shared/anchor/make_kit.sh, carry .anchor/bin"; exit 2; }
[ "$A_TREE" = "$B_TREE" ] || ln -sfn "$B_TREE/.anchor" "$A_TREE/.anchor"  # run_ours.sh serves the tree it sits in
export R=${R:-/tmp/served_ab_res} FRESH=1 DEADLINE=${DEADLINE:-300}
[ -e "${PY:-}" ] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # the runs start in either tree
[ -d "${WHL_DIR:-}" ] && WHL_DIR=$(cd "$WHL_DIR" && pwd)

stop_all() {  # every server run_ours.sh may have left: this one's, side_by_side's, an earlier call's
  for r in "$R" /tmp/ours_res; do FRESH=0 R=$r bash "$B_TREE/.anchor/bin/run_ours.sh" stop > /dev/null 2>&1; done
}

stop_all
for round in $(seq "$ROUNDS"); do
  for side in A B; do
    if [ $side = A ]; then tree=$A_TREE extra=${A_ENV:-}; else tree=$B_TREE extra=${B_ENV:-}; fi
    stop_all  # a fresh start even when both sides have the same sources and settings
    # OUT unset: run_ours.sh would copy its own files there
    (cd "$tree" && env -u OUT $extra bash .anchor/bin/run_ours.sh "$W" > "$RUNS/${side}_${round}.log" 2>&1)
    if [ -f "$R/bench.json" ]; then
      cp "$R/bench.json" "$RUNS/${side}_${round}.json"  # and run_ours.sh's own summary line per workload:
      sed -n '/done; summary:/,$p' "$RUNS/${side}_${round}.log" | tail -n +2 | sed "s/^/$side round $round: /" \
        | tee -a "$OUT/ab.txt"
    else
      echo "$side round $round: no results (see ${side}_${round}.log)" | tee -a "$OUT/ab.txt"
      tail -n 20 "$RUNS/${side}_${round}.log"
    fi
  done
done
stop_all
python3 - "$RUNS" << 'EOF' | tee -a "$OUT/ab.txt"
import glob, json, os, statistics, sys
by = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "[AB]_*.json"))):
    side = os.path.basename(path)[0]
    for name, s in json.load(open(path)).items():
        if name != "warmup" or s["ttft_mean_s"]:
            by.setdefault((name, side), []).append(s)
for (name, side), runs in sorted(by.items()):
    ttft = [(r["ttft_mean_s"] or 0) * 1e3 for r in runs]
    mean = lambda key: statistics.mean(r[key] or 0 for r in runs)  # noqa: E731
    print(f"mean of {len(runs)} {side} {name}: TTFT {statistics.mean(ttft):.2f} ms (runs {min(ttft):.2f}-{max(ttft):.2f}),"
          f" TPOT {mean('tpot_mean_ms'):.3f} ms, {mean('output_tok_per_s'):.0f} out tok/s")
EOF
