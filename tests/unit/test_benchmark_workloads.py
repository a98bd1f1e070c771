"""The benchmarks that stand in for the anchor kit's W1 draw the kit's requests: the same lengths as the kit's
own run (its output token count is in benchmarks/anchor/), so engine-alone and modelled figures compare with
the served ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import engine_workload, w1_critical_path

ROOT = Path(__file__).resolve().parents[2]


def test_w1_draws_are_the_kits():
    served = json.loads((ROOT / "benchmarks/anchor/2026-12-03d_ours.json").read_text())["W1"]
    ins, outs = w1_critical_path.lengths(1234)
    assert int(outs.sum()) == served["output_tokens"] == 177900
    rng = np.random.default_rng(1234)
    _, _, in_spec, out_spec = engine_workload.WORKLOADS["W1"]
    assert engine_workload.lengths(in_spec, 1000, rng, 1.0) == ins.tolist()
    assert engine_workload.lengths(out_spec, 1000, rng, 1.0) == outs.tolist()


def test_critical_path_model_follows_the_longest_request():
    # A decode step of 5 ms at any batch and free prefill: the longest request (1,842 tokens, sent 840th) ends
    # the run, 1,842 steps after it starts.
    result = w1_critical_path.simulate(lambda rows: 5.0, prefill_tok_s=float("inf"))
    longest = result["longest"]
    assert (longest["index"], longest["tokens"]) == (840, 1842)
    assert abs(result["wall_s"] - (longest["starts_s"] + 1842 * 5e-3)) < 0.02
    # The time by row count adds up to the wall time; the longest request's last steps run alone.
    bands = result["by_rows_s"]
    assert abs(sum(bands.values()) - result["wall_s"]) < 0.02
    assert bands["1"] > 0 and abs(bands["1"] + bands["2-16"] + bands["17-63"] - result["under_64_rows_s"]) < 0.02
    # Cheaper steps at every batch size can only shorten it.
    faster = w1_critical_path.simulate(lambda rows: 4.0, prefill_tok_s=float("inf"))
    assert faster["wall_s"] < result["wall_s"]
