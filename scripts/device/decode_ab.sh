#!/usr/bin/env bash
# Decode-step A/B of kernel changes: benchmarks/tp_decode.py (tp = 1, CUDA graph replays of ModelRunner.forward)
# from several trees, alternated round by round on one GPU, so each change is judged against its baseline measured
# minutes apart on the same machine (the step time moves ~1% between runs of one tree). The engine-level twin of
# served_ab.sh; a step that is faster here still has to show in LAT's TPOT and W1 (benchmarks/RESULTS.md).
#   trees: mkdir -p .device/a && git archive <rev> | tar x -C .device/a   (ignored folders, carried); "." = here
#   run: bash scripts/device/decode_ab.sh TREE [TREE ...]     (ROUNDS=3 BATCH="1 64" CTX=640 ITERS=300)
#   carry: the trees other than "."   timeout_s: ~30 s per tree and round, plus the machine's start
# Back in $OUT: decode_ab.txt (each run's step ms per batch, then the mean and range per tree and batch).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: decode_ab.sh TREE [TREE ...]"; exit 2; }
OUT=${OUT:-/tmp/decode_ab}; mkdir -p "$OUT"
ROUNDS=${ROUNDS:-3} BATCH=${BATCH:-1 64} CTX=${CTX:-640} ITERS=${ITERS:-300}
RUNS=$(mktemp -d)
nvidia-smi --query-gpu=name,uuid --format=csv,noheader | tee "$OUT/decode_ab.txt"
for round in $(seq "$ROUNDS"); do
  for tree in "$@"; do
    name=$(basename "$(cd "$tree" && pwd)")
    # shellcheck disable=SC2086  # BATCH is a list of sizes
    (cd "$tree" && python3 benchmarks/tp_decode.py --tp 1 --batch $BATCH --ctx "$CTX" --mode graph --iters "$ITERS" \
      --out "$RUNS/${name}_${round}.json" > "$RUNS/${name}_${round}.log" 2>&1) \
      || { echo "$name round $round failed:"; tail -n 5 "$RUNS/${name}_${round}.log"; }
  done
done
python3 - "$RUNS" "$@" << 'EOF' | tee -a "$OUT/decode_ab.txt"
import glob, json, os, statistics, sys
runs, trees = sys.argv[1], [os.path.basename(os.path.abspath(t)) for t in sys.argv[2:]]
by = {}
for path in sorted(glob.glob(os.path.join(runs, "*_*.json"))):
    name, round_ = os.path.basename(path)[:-5].rsplit("_", 1)
    for row in json.load(open(path))["rows"]:
        if row.get("step_ms_graph") is None:
            continue  # the run printed why (its log)
        print(f"{name} round {round_}: batch {row['batch']} ctx {row['ctx']}: {row['step_ms_graph']} ms")
        by.setdefault((row["batch"], name), []).append(row["step_ms_graph"])
for (batch, name), ms in sorted(by.items(), key=lambda kv: (kv[0][0], trees.index(kv[0][1]))):
    print(f"batch {batch} {name}: mean {statistics.mean(ms):.3f} ms (runs {min(ms):.3f}-{max(ms):.3f}, n={len(ms)})")
EOF
rm -rf "$RUNS"
