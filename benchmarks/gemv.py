"""Decode-shaped linear layers: our GEMV kernel (llm_core/kernels/gemv.py) against cuBLAS, and its tuning.

For each weight shape of a Llama-3-8B rank (tp=1 or tp=2: qkv, o, gate_up with SiLU-and-mul, down, lm_head)
at one row (batch-1 decode), every launch config of the sweep is timed, then the best against torch (cuBLAS, plus our
SiLU-and-mul kernel after gate_up). Calls cycle over enough weight copies (> 400 MB) that every call streams
its weights from HBM as in a decode step, replayed from a CUDA graph. `--write` records the winner per shape
(null where cuBLAS wins) into the table `gemv_config` reads: llm_core/kernels/configs/gemv_<GPU name>.json.

  python benchmarks/gemv.py --tp 1 2 --out gemv.md --write llm_core/kernels/configs/gemv_NVIDIA_H200.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tp_decode import _time_cuda  # noqa: E402
from llm_core.kernels import gemv  # noqa: E402
from llm_core.kernels.silu_and_mul import silu_and_mul  # noqa: E402

HIDDEN, INTER, Q_HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4096, 14336, 32, 8, 128, 128256
STREAM_BYTES = 400 << 20
# BLOCK_N x BLOCK_K x SPLIT_K x num_warps x num_stages
BLOCK_NS = [2, 4, 8, 16]
BLOCK_KS = [512, 1024, 2048]
SPLITS = [1, 2]
WARPS = [4, 8]
STAGES = [1, 3]


def shapes(tp: int) -> list[tuple[str, int, int, bool]]:
    # (name, output columns, K, silu): the weight is [N, K], or [2N, K] with silu
    return [
        ("qkv", (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM // tp, HIDDEN, False),
        ("o", HIDDEN, Q_HEADS * HEAD_DIM // tp, False),
        ("gate_up+silu", INTER // tp, HIDDEN, True),
        ("down", HIDDEN, INTER // tp, False),
        ("lm_head", VOCAB // tp, HIDDEN, False),
    ]


def _time_calls(fn, weights, x, iters: int) -> float:
    """µs per call: one call per weight copy, captured once, replayed."""
    for w in weights[:2]:
        fn(x, w)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for w in weights:
            fn(x, w)
    return _time_cuda(graph.replay, iters) * 1e3 / len(weights)  # ms -> µs


def sweep_configs() -> list[tuple[int, int, int, int, int]]:
    return list(itertools.product(BLOCK_NS, BLOCK_KS, SPLITS, WARPS, STAGES))


def bench_shape(name, n, k, silu, iters, device, configs) -> dict:
    w_rows = 2 * n if silu else n
    nbytes = w_rows * k * 2
    copies = max(2, math.ceil(STREAM_BYTES / nbytes))
    weights = [(torch.randn(w_rows, k, device=device) / k**0.5).to(torch.bfloat16) for _ in range(copies)]
    x = torch.randn(1, k, device=device).to(torch.bfloat16)
    op = gemv.linear_silu_and_mul if silu else gemv.linear

    def torch_fn(x, w):
        y = torch.nn.functional.linear(x, w)
        return silu_and_mul(y) if silu else y

    ref = torch_fn(x, weights[0]).float()
    torch_us = _time_calls(torch_fn, weights, x, iters)
    results = []
    for cfg in configs:
        block_n, block_k, split_k, warps, _ = cfg
        acc_regs = (2 if silu else 1) * block_n * block_k // (32 * warps)
        if block_k * split_k > k or acc_regs > 128:  # empty splits / register spills
            continue
        try:
            out = op(x, weights[0], config=cfg).float()
        except triton.runtime.errors.OutOfResources:  # pipelined tiles beyond shared memory
            continue
        err = float((out - ref).norm() / ref.norm())
        if not err < 2e-2:
            raise AssertionError(f"{name} {cfg}: relative error {err:.3g} against cuBLAS")
        results.append((_time_calls(lambda x, w, cfg=cfg: op(x, w, config=cfg), weights, x, iters), cfg))
    results.sort()
    best_us, best = results[0]
    del weights
    torch.cuda.empty_cache()
    return {
        "name": name, "n": n, "k": k, "silu": silu, "mb": nbytes / 1e6,
        "torch_us": torch_us, "best_us": best_us, "best": best, "top": results[:4]
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--write", type=Path, help="merge the winners into this JSON table")
    args = parser.parse_args()
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    lines = [
        f"Device: {name}; torch {torch.__version__}; bf16; µs per call, weights streamed from HBM",
        "",
        "| tp | layer | N | K | MB | cuBLAS µs | cuBLAS TB/s | GEMV µs | GEMV TB/s | speed-up | best config "
        "(BLOCK_N, BLOCK_K, SPLIT_K, warps, stages) | next best |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    winners = {}
    for tp in args.tp:
        for layer, n, k, silu in shapes(tp):
            r = bench_shape(layer, n, k, silu, args.iters, device, sweep_configs())
            line = (
                f"| {tp} | {layer} | {n} | {k} | {r['mb']:.1f} | {r['torch_us']:.2f} | "
                f"{r['mb'] / r['torch_us']:.2f} | {r['best_us']:.2f} | {r['mb'] / r['best_us']:.2f} | "
                f"{r['torch_us'] / r['best_us']:.2f} | {r['best']} | "
                + ", ".join(f"{cfg} {us:.2f}" for us, cfg in r["top"][1:])
                + " |"
            )
            print(line, flush=True)
            lines.append(line)
            winners[gemv.config_key(n, k, silu)] = list(r["best"]) if r["best_us"] < r["torch_us"] else None
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    if args.write:
        table = json.loads(args.write.read_text()) if args.write.exists() else {"device": name, "configs": {}}
        assert table["device"] == name, (table["device"], name)
        table["configs"].update(winners)
        table["configs"] = dict(sorted(table["configs"].items()))
        args.write.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
