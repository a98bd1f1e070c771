"""Linear layers at W1's batch sizes: cuBLAS (torch) against a plain Triton tiled GEMM, per Llama-3-8B shape.

W1 decodes at ~200-256 rows with mixed steps of a few hundred more prompt tokens; a step there takes ~2x the
FLOP floor of its GEMMs. This times y = x W^T for every weight shape of a decode step at each row count, cycling
over enough weight copies (> 400 MB) that every call streams its weights from HBM as in a step, and sums the
shapes into a step's GEMM time (32 layers + lm_head) for each backend: how much of the step is GEMM, and how
much a better GEMM could take off.

  python benchmarks/gemm.py --rows 64 128 256 384 --out gemm.md
  python benchmarks/gemm.py --cublas-only --rows $(seq 384 2 432)   # cuBLAS alone, e.g. around a graph bucket
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gemv import STREAM_BYTES, _time_calls  # noqa: E402

LAYERS = 32
SHAPES = [  # name, N, K, per step
    ("qkv", 6144, 4096, LAYERS),
    ("o", 4096, 4096, LAYERS),
    ("gate_up", 28672, 4096, LAYERS),
    ("down", 4096, 14336, LAYERS),
    ("lm_head", 128256, 4096, 1),
]
CONFIGS = [  # tile configs of the Triton GEMM: BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages
    c
    for c in itertools.product([64, 128], [64, 128, 256], [64, 128], [8], [4, 8], [3, 4, 5])
    if not (c[0] == 128 and c[1] == 256 and c[2] == 128)  # shared memory
]


@triton.jit
def _gemm_kernel(
    x_ptr, w_ptr, y_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # y[M, N] = x[M, K] @ w[N, K]^T, all contiguous; K a multiple of BLOCK_K.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * K
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * K
    m_mask = rm[:, None] < M
    n_mask = rn[:, None] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(x_rows + (k0 + rk)[None, :], mask=m_mask, other=0.0)
        b = tl.load(w_rows + (k0 + rk)[None, :], mask=n_mask, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc)
    out = y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_mask & (rn[None, :] < N))


def triton_linear(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, cfg) -> None:
    bm, bn, bk, gm, warps, stages = cfg
    m, k = x.shape
    n = w.shape[0]
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _gemm_kernel[grid](x, w, y, m, n, k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm,
                       num_warps=warps, num_stages=stages)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[64, 128, 192, 256, 384, 512])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--sweep-rows", type=int, default=256, help="rows at which every Triton config is timed")
    ap.add_argument("--cublas-only", action="store_true", help="time cuBLAS alone (no Triton sweep)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dev = torch.device("cuda")
    lines = [
        f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}; bf16",
        "",
    ]
    results = []
    for name, n, k, per_step in SHAPES:
        copies = max(2, -(-STREAM_BYTES // (n * k * 2)))
        ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        for m in args.rows:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            y = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
            weights = ws + ws  # each copy twice per replay

            def cublas(x, w, y=y):
                torch.matmul(x, w.t(), out=y)

            torch_ms = _time_calls(cublas, weights, x, args.iters) / 1e3
            ref = torch.nn.functional.linear(x, ws[0]).float()
            cfgs = [] if args.cublas_only else CONFIGS if m == args.sweep_rows or name == "o" else CONFIGS[::3]
            best = (float("inf"), None)
            for cfg in cfgs:
                try:
                    triton_linear(x, ws[0], y, cfg)
                    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                    if err > 2e-2:
                        continue

                    def ours(x, w, y=y, cfg=cfg):
                        triton_linear(x, w, y, cfg)

                    ms = _time_calls(ours, weights, x, args.iters) / 1e3
                except Exception as exc:  # noqa: BLE001 - a config that does not compile or fit is skipped
                    print(f"{name} m={m} {cfg}: {type(exc).__name__}", flush=True)
                    continue
                best = min(best, (ms, cfg))
            flop = 2 * m * n * k
            row = {
                "shape": name, "m": m, "n": n, "k": k, "per_step": per_step,
                "torch_us": round(torch_ms * 1e3, 2), "triton_us": round(best[0] * 1e3, 2), "triton_cfg": best[1],
                "torch_tflops": round(flop / torch_ms / 1e9, 1), "triton_tflops": round(flop / best[0] / 1e9, 1),
                "weight_tbs_torch": round(n * k * 2 / torch_ms / 1e9, 2),
            }  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
        ws.clear()
        torch.cuda.empty_cache()
    lines += [
        "| shape | rows | cuBLAS us | TFLOP/s | weights TB/s | Triton us | TFLOP/s | Triton tile config |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['shape']} | {r['m']} | {r['torch_us']} | {r['torch_tflops']} | {r['weight_tbs_torch']} | "
            f"{r['triton_us']} | {r['triton_tflops']} | {r['triton_cfg']} |"
        )
    lines += [
        "",
        "Per decode step (32 layers + lm_head), ms of GEMM:",
        "",
        "| rows | cuBLAS | best of each |",
        "|---:|---:|---:|",
    ]
    for m in args.rows:
        rows = [r for r in results if r["m"] == m]
        t = sum(r["torch_us"] * r["per_step"] for r in rows) / 1e3
        b = sum(min(r["torch_us"], r["triton_us"]) * r["per_step"] for r in rows) / 1e3
        lines.append(f"| {m} | {t:.2f} | {b:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
