"""How long the anchor kit's W1 must take on a server whose step costs are given: a closed-loop model.

W1 is 1000 requests with lognormal lengths drawn from the kit's seed, 256 clients, each sending its next request
when its last one ends. A server that admits every request at once (FCFS, as ours and LightLLM do at 256 users)
runs one token per running request per step, so the wall time is set by a critical path: the request with the
most output tokens (1,842, the 840th sent at seed 1234) is sent only after 584 others have finished and then
needs 1,842 steps of its own, most of them at small batches.

The model steps a batch of decode rows with a cost from measured points (ms per decode step at a row count,
linear in between) plus the step's new prompt tokens at a prefill rate, and reports the wall time, output
tokens/s, when the longest request starts, the time spent at fewer than 64 rows and the wall time by the step's row
count (1, 2-16, 17-63, 64-128, 129-256 rows). Run it with the measured
step costs (`benchmarks/profile_decode.py`, `benchmarks/engine_workload.py`) and with hardware floors to see how
far a faster step can move W1:

  python benchmarks/w1_critical_path.py                                  # the built-in cases below
  python benchmarks/w1_critical_path.py --decode 1:4.14 64:6.0 256:13.3 --prefill-tok-s 42000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_workload import WORKLOADS  # noqa: E402
from benchmarks.engine_workload import lengths as draw  # noqa: E402

NUM, CLIENTS, IN_SPEC, OUT_SPEC = WORKLOADS["W1"]
ROW_BANDS = {"1": 1, "2-16": 16, "17-63": 63, "64-128": 128, "129-256": CLIENTS}  # name: most rows in the band


def lengths(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """W1's input and output lengths as the kit draws them (engine_workload.lengths, in this order)."""
    rng = np.random.default_rng(seed)
    ins = draw(IN_SPEC, NUM, rng, 1.0)
    return np.array(ins), np.array(draw(OUT_SPEC, NUM, rng, 1.0))


def simulate(decode_ms, prefill_tok_s: float, seed: int = 1234, lag_ms: float = 0.0) -> dict:
    """decode_ms(rows) -> ms of a decode step; each step also pays its new prompt tokens at prefill_tok_s.
    lag_ms: time from a request's last token to the client's next request reaching the engine."""
    ins, outs = lengths(seed)
    left = {i: int(outs[i]) for i in range(CLIENTS)}
    start = dict.fromkeys(range(CLIENTS), 0.0)
    new_tokens = int(ins[:CLIENTS].sum())
    arriving: list[tuple[float, int]] = []
    t = 0.0
    by_rows_ms = dict.fromkeys(ROW_BANDS, 0.0)
    sent = CLIENTS
    while left or arriving:
        for _, i in [a for a in arriving if a[0] <= t]:
            left[i], start[i] = int(outs[i]), t
            new_tokens += int(ins[i])
        arriving = [a for a in arriving if a[0] > t]
        if not left:
            t = min(when for when, _ in arriving)
            continue
        step = decode_ms(len(left)) + 1e3 * new_tokens / prefill_tok_s
        new_tokens = 0
        t += step
        by_rows_ms[next(band for band, top in ROW_BANDS.items() if len(left) <= top)] += step
        for i in list(left):
            left[i] -= 1
            if left[i] == 0:
                del left[i]
                if sent < NUM:
                    arriving.append((t + lag_ms, sent))
                    sent += 1
    longest = int(np.argmax(outs))
    return {
        "wall_s": round(t / 1e3, 2),
        "output_tok_s": round(float(outs.sum()) / t * 1e3),
        "longest": {"index": longest, "tokens": int(outs[longest]), "starts_s": round(start[longest] / 1e3, 2)},
        "under_64_rows_s": round(sum(ms for band, ms in by_rows_ms.items() if ROW_BANDS[band] < 64) / 1e3, 2),
        "by_rows_s": {band: round(ms / 1e3, 2) for band, ms in by_rows_ms.items()},
    }  # fmt: skip


def from_points(points: list[tuple[int, float]]):
    rows, ms = zip(*sorted(points), strict=True)
    return lambda n: float(np.interp(n, rows, ms))


def floor(weights_gb: float = 16.06, hbm_tb_s: float = 4.8, bf16_tflops: float = 990, ctx: int = 350):
    """A decode step no server can beat on one H200 at bf16: the weights read once at the HBM peak or the
    GEMMs at the dense bf16 peak, whichever is longer, plus every row's K/V (Llama-3-8B: 32 layers x 8 heads x
    128 x 2 x 2 bytes per token) at the HBM peak; nothing else."""
    flop_per_row = weights_gb * 1e9  # two FLOPs per weight, two bytes per bf16 weight
    kv_bytes_per_token = 32 * 8 * 128 * 2 * 2
    return lambda n: (
        1e3
        * (
            max(weights_gb * 1e9 / (hbm_tb_s * 1e12), n * flop_per_row / (bf16_tflops * 1e12))
            + n * ctx * kv_bytes_per_token / (hbm_tb_s * 1e12)
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decode", nargs="*", default=[], help="ROWS:MS points of the decode step (graph)")
    ap.add_argument("--prefill-tok-s", type=float, default=42000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    if args.decode:
        points = [(int(r), float(m)) for r, m in (p.split(":") for p in args.decode)]
        print(json.dumps(simulate(from_points(points), args.prefill_tok_s, args.seed)))
        return 0
    # Measured on one H200 (benchmarks/RESULTS.md): decode graph 1 row 4.14 ms, 64 rows 6.0, 256 rows 13.3 (ctx 512);
    # prefill ~42k tokens/s (86% of the bf16 matmul rate on the 8B-shaped model).
    measured = from_points([(1, 4.14), (64, 6.0), (256, 13.3)])
    cases = {
        "measured step costs": simulate(measured, 42000, args.seed),
        "measured, +30 ms per request through the serving layer": simulate(measured, 42000, args.seed, lag_ms=30),
        "measured, seed 0 (the draws engine_workload.py used before)": simulate(measured, 42000, 0),
        "measured, 256 rows at 10 ms": simulate(from_points([(1, 4.14), (64, 6.0), (256, 10.0)]), 42000, args.seed),
        "hardware floor (peak HBM and bf16 rates, context 350)": simulate(floor(), 990e12 / 16.06e9, args.seed),
    }
    for name, result in cases.items():
        print(f"{name:60s} {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
