"""Kernel benchmark (not a test): our Triton kernels vs the device's ceilings and plain torch.

Ceilings are measured in the same run: a large device-to-device copy (bytes read + written)
and a large bf16 matrix product. Each memory-bound kernel reports the fewest bytes it must move
(each input read once, each output written once) over its median time; attention reports
TFLOP/s for prefill (causal FLOPs) and GB/s for decode (K/V bytes). The torch column runs the
equivalent in the same process: torch_ops for the element-wise ops,
scaled_dot_product_attention (flash backend) for prefill, SDPA over already-gathered contiguous
K/V for decode (torch has no token-table attention; its gather is left out in its favour).
Shapes: Llama-3-8B (32 q heads, 8 kv heads, head_dim 128, hidden 4096, intermediate 14336), bf16.

  python benchmarks/kernel_bench.py --out bench.md --json bench.json [--sweep] [--quick]
  python benchmarks/kernel_bench.py --prefill-sweep     (only the prefill launch shapes at 1x512 and 1x8192, ~1 min)
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_core import kernels  # noqa: E402
from llm_core.kernels.decode_attention import DecodeConfig, decode_attention_with_splits, num_splits_for  # noqa: E402
from llm_core.kernels.prefill_attention import (  # noqa: E402
    PrefillConfig,
    default_config,
    prefill_attention_with_config,
)
from llm_core.ops import torch_ops  # noqa: E402

DEV = torch.device("cuda")
DT = torch.bfloat16
HQ, HK, D, HIDDEN, INTER = 32, 8, 128, 4096, 14336
ROWS, MAX_POS, COPY_ELEMS, MATMUL_N = 16384, 32768, 1 << 28, 8192
# LAT's prompt (the default shape: 10% of the matmul ceiling) up to W2's scale
SWEEP_PREFILL_LENS = [512, 1024, 2048, 8192]
SWEEP_DECODE = [(64, 2048), (1, 32768), (1, 8192), (16, 8192), (256, 2048)]  # (batch, context)
GB = 1e9


def bench(fn: Callable[[], object], rep_ms: int = 200) -> float:
    """Median milliseconds (CUDA events, L2 flushed between runs by do_bench)."""
    if DEV.type == "cpu":  # --smoke: one timed call, only to exercise the script
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")


def bench_graph(fn: Callable[[], object], rep_ms: int = 100) -> float:
    """Median milliseconds of one CUDA-graph replay of fn: the GPU time without Python launch cost."""
    if DEV.type == "cpu":
        return bench(fn)
    return bench(_graphed(fn), rep_ms)


def attempt(rows: list[dict], make_row: Callable[[], dict]) -> None:
    """Run one case; a failure is printed and recorded, and the run goes on."""
    try:
        rows.append(make_row())
        print(rows[-1], flush=True)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        rows.append({"kernel": "FAILED", "shape": traceback.format_exc(limit=1).splitlines()[-1][:100]})
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


def randn(*shape: int, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(shape, device=DEV, dtype=dtype)


def ceilings() -> dict:
    src = torch.randn(COPY_ELEMS, device=DEV)  # 1 GiB of fp32
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))
    a, b = randn(MATMUL_N, MATMUL_N), randn(MATMUL_N, MATMUL_N)
    mm_ms = bench(lambda: a @ b)
    return {
        "copy_GBps": 2 * COPY_ELEMS * 4 / (copy_ms * 1e-3) / GB,
        "matmul_TFLOPs": 2 * MATMUL_N**3 / (mm_ms * 1e-3) / 1e12,
    }


def row(
    name: str,
    shape: str,
    unit: str,
    amount: float,
    ours_ms: float,
    torch_ms: float | None,
    ours_graph_ms: float | None = None,
    torch_graph_ms: float | None = None,
) -> dict:
    """amount: bytes (unit GB/s) or FLOPs (unit TFLOP/s) per call."""
    scale = GB if unit == "GB/s" else 1e12
    return {
        "ours_graph_ms": ours_graph_ms,
        "ours_graph": None if ours_graph_ms is None else amount / (ours_graph_ms * 1e-3) / scale,
        "torch_graph_ms": torch_graph_ms,
        "kernel": name,
        "shape": shape,
        "unit": unit,
        "ours_ms": ours_ms,
        "ours": amount / (ours_ms * 1e-3) / scale,
        "torch_ms": torch_ms,
        "torch": None if torch_ms is None else amount / (torch_ms * 1e-3) / scale,
    }


def elementwise_rows() -> list[dict]:
    rows: list[dict] = []
    t = ROWS
    x, res = randn(t, HIDDEN), randn(t, HIDDEN)
    w = 1 + 0.1 * randn(HIDDEN)
    nbytes = 2 * t * HIDDEN * 2
    attempt(rows, lambda: row(
        "rms_norm", f"{t}x{HIDDEN}", "GB/s", nbytes,
        bench(lambda: kernels.rms_norm(x, w, 1e-5)), bench(lambda: torch_ops.rms_norm(x, w, 1e-5)),
    ))  # fmt: skip
    attempt(rows, lambda: row(
        "add_rms_norm", f"{t}x{HIDDEN}", "GB/s", 2 * nbytes,
        bench(lambda: kernels.add_rms_norm(x, res, w, 1e-5)),
        bench(lambda: torch_ops.add_rms_norm(x, res, w, 1e-5)),
    ))  # fmt: skip

    qkv = randn(t, (HQ + 2 * HK) * D)
    q = qkv[:, : HQ * D].view(t, HQ, D)
    k = qkv[:, HQ * D : (HQ + HK) * D].view(t, HK, D)
    v = qkv[:, (HQ + HK) * D :].view(t, HK, D)
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=DEV).float() / D))
    cos_sin = torch_ops.rotary_cos_sin(inv_freq, MAX_POS)
    positions = torch.randint(0, MAX_POS, (t,), device=DEV)
    rot_bytes = 2 * t * (HQ + HK) * D * 2 + t * D * 4 + t * 8
    attempt(rows, lambda: row(
        "apply_rotary", f"T={t} q{HQ}/k{HK} x{D}", "GB/s", rot_bytes,
        bench(lambda: kernels.apply_rotary(q, k, positions, cos_sin)),
        bench(lambda: torch_ops.apply_rotary(q, k, positions, cos_sin)),
    ))  # fmt: skip

    num_slots = 4 * t
    k_cache, v_cache = randn(num_slots + 1, HK, D), randn(num_slots + 1, HK, D)
    slots = torch.randperm(num_slots, device=DEV)[:t].to(torch.int32)
    store_bytes = 4 * t * HK * D * 2 + t * 4
    attempt(rows, lambda: row(
        "store_kv", f"T={t} kv{HK} x{D}, scattered slots", "GB/s", store_bytes,
        bench(lambda: kernels.store_kv(k, v, k_cache, v_cache, slots)),
        bench(lambda: torch_ops.store_kv(k, v, k_cache, v_cache, slots)),
    ))  # fmt: skip
    big_k, big_v = randn(4 * t, HK, D), randn(4 * t, HK, D)
    big_slots = torch.randperm(num_slots, device=DEV).to(torch.int32)
    attempt(rows, lambda: row(
        "store_kv", f"T={4 * t} kv{HK} x{D}, scattered slots", "GB/s", 4 * store_bytes,
        bench(lambda: kernels.store_kv(big_k, big_v, k_cache, v_cache, big_slots)),
        bench(lambda: torch_ops.store_kv(big_k, big_v, k_cache, v_cache, big_slots)),
    ))  # fmt: skip

    ts = t // 2
    gate_up = randn(ts, 2 * INTER)
    attempt(rows, lambda: row(
        "silu_and_mul", f"{ts}x2x{INTER}", "GB/s", 3 * ts * INTER * 2,
        bench(lambda: kernels.silu_and_mul(gate_up)), bench(lambda: torch_ops.silu_and_mul(gate_up)),
    ))  # fmt: skip

    embeds = randn(t, HIDDEN)
    num_image = t // 8
    image = randn(num_image, HIDDEN)
    pos = torch.randperm(t, device=DEV)[:num_image]
    attempt(rows, lambda: row(
        "inject_image_embeds", f"{num_image} of {t} x{HIDDEN}", "GB/s", 2 * image.numel() * 2 + num_image * 8,
        bench(lambda: kernels.inject_image_embeds(embeds, image, pos)),
        bench(lambda: torch_ops.inject_image_embeds(embeds, image, pos)),
    ))  # fmt: skip
    return rows


def token_table(seq_lens: list[int], prefix_lens: list[int] | None = None, contiguous: bool = False):
    """A pool holding every token at a random slot (contiguous: in order), and the request table."""
    total = sum(seq_lens)
    k_cache, v_cache = randn(total + 1, HK, D), randn(total + 1, HK, D)
    perm = torch.arange(total, device=DEV) if contiguous else torch.randperm(total, device=DEV)
    perm = perm.to(torch.int32)
    req_to_slot = torch.full((len(seq_lens) + 1, max(seq_lens)), total, dtype=torch.int32, device=DEV)
    used = 0
    for b, n in enumerate(seq_lens):
        req_to_slot[b, :n] = perm[used : used + n]
        used += n
    rows = torch.arange(len(seq_lens), device=DEV, dtype=torch.int32)
    return k_cache, v_cache, req_to_slot, rows


def decode_case(
    batch: int, ctx: int, config: DecodeConfig, num_splits: int | None, with_torch: bool, contiguous: bool = False
) -> dict:
    seq_lens = [ctx] * batch
    k_cache, v_cache, req_to_slot, rows = token_table(seq_lens, contiguous=contiguous)
    lens = torch.tensor(seq_lens, device=DEV, dtype=torch.int32)
    q = randn(batch, HQ, D)
    scale = D**-0.5
    if num_splits is None:
        num_sms = torch.cuda.get_device_properties(DEV).multi_processor_count if DEV.type == "cuda" else 4
        num_splits = num_splits_for(batch, HK, ctx, num_sms, config)

    def ours():
        return decode_attention_with_splits(
            q, k_cache, v_cache, req_to_slot, rows, lens, ctx, scale, num_splits, config
        )

    nbytes = batch * ctx * HK * D * 2 * 2 + 2 * q.numel() * 2 + batch * ctx * 4
    ours_ms = bench(ours, rep_ms=100)
    ours_graph_ms = bench_graph(ours)
    torch_ms = torch_graph_ms = None
    if with_torch and batch * ctx <= 4 << 20:
        # Contiguous [B, Hk, ctx, D] K/V, gathered outside the timed region.
        kc = k_cache[req_to_slot[:batch].long()].permute(0, 2, 1, 3).contiguous()
        vc = v_cache[req_to_slot[:batch].long()].permute(0, 2, 1, 3).contiguous()
        qs = q[:, :, None, :]
        sdpa = torch.nn.functional.scaled_dot_product_attention
        try:
            torch_ms = bench(lambda: sdpa(qs, kc, vc, scale=scale, enable_gqa=True), rep_ms=100)
            torch_graph_ms = bench_graph(lambda: sdpa(qs, kc, vc, scale=scale, enable_gqa=True))
        except RuntimeError as e:
            print(f"torch decode baseline failed: {e}", flush=True)
    shape = f"B={batch} ctx={ctx} splits={num_splits}"
    return row("decode_attention", shape, "GB/s", nbytes, ours_ms, torch_ms, ours_graph_ms, torch_graph_ms)


def prefill_case(query_lens: list[int], config: PrefillConfig | None, with_torch: bool) -> dict:
    k_cache, v_cache, req_to_slot, rows = token_table(query_lens)
    n = sum(query_lens)
    q = randn(n, HQ, D)
    ints = lambda v: torch.tensor(v, device=DEV, dtype=torch.int32)  # noqa: E731
    starts = ints([0] + list(torch.tensor(query_lens).cumsum(0).tolist()))
    zeros, lens = ints([0] * len(query_lens)), ints(query_lens)
    scale = D**-0.5
    cfg = config or default_config(D, DT)

    def ours():
        return prefill_attention_with_config(
            q, k_cache, v_cache, req_to_slot, rows, zeros, lens, starts, max(query_lens), scale, cfg
        )

    flops = sum(4 * HQ * D * L * (L + 1) / 2 for L in query_lens)
    ours_ms = bench(ours, rep_ms=200)
    torch_ms = None
    if with_torch and len(set(query_lens)) == 1:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        b, L = len(query_lens), query_lens[0]
        qs = q.view(b, L, HQ, D).transpose(1, 2)
        ks = randn(b, HK, L, D)
        vs = randn(b, HK, L, D)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        backend = SDPBackend.FLASH_ATTENTION if DEV.type == "cuda" else SDPBackend.MATH
        with sdpa_kernel(backend):
            try:
                torch_ms = bench(lambda: sdpa(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True))
            except RuntimeError:  # flash without native GQA: same FLOPs on repeated K/V
                kr, vr = ks.repeat_interleave(HQ // HK, 1), vs.repeat_interleave(HQ // HK, 1)
                torch_ms = bench(lambda: sdpa(qs, kr, vr, is_causal=True, scale=scale))
    shape = f"{len(query_lens)}x{query_lens[0]}" if len(set(query_lens)) == 1 else f"ragged {query_lens}"
    return row("prefill_attention", shape + " causal", "TFLOP/s", flops, ours_ms, torch_ms)


PREFILL_SWEEP = [PrefillConfig(128, 64, 4, 3), PrefillConfig(128, 128, 8, 3), PrefillConfig(128, 64, 8, 3)]
# Smaller query blocks: more programs for a short prompt (1x512 is 4 blocks x 32 heads = 128 programs at 128).
PREFILL_SWEEP += [PrefillConfig(64, 64, 4, 3), PrefillConfig(64, 32, 4, 3), PrefillConfig(64, 64, 4, 2)]
PREFILL_SWEEP += [PrefillConfig(32, 64, 4, 3), PrefillConfig(32, 32, 2, 3)]
DECODE_SWEEP = [
    DecodeConfig(),
    DecodeConfig(block_n=64, num_warps=4, num_stages=3),
    DecodeConfig(block_n=64, num_warps=2, num_stages=3),
    DecodeConfig(block_n=64, num_warps=2, num_stages=4, programs_per_sm=2),
    DecodeConfig(block_n=32, num_warps=2, num_stages=4),
]
# (batch, context, forced number of splits) with the default launch shape
SPLITS_SWEEP = [(1, 512, s) for s in (1, 2)] + [(16, 512, s) for s in (1, 2)] + [(1, 2048, s) for s in (1, 4, 8)]
SPLITS_SWEEP += [(1, 32768, s) for s in (16, 32, 64, 128)] + [(16, 8192, s) for s in (2, 3, 5, 8)]


def prefill_sweep() -> list[str]:
    """The prefill kernel's launch shapes at one prompt of each SWEEP_PREFILL_LENS length."""
    lines = []
    for length in SWEEP_PREFILL_LENS:
        for cfg in PREFILL_SWEEP:
            try:
                r = prefill_case([length], cfg, with_torch=False)
                lines.append(f"- prefill 1x{length} {cfg}: {r['ours_ms'] * 1e3:.1f} us, {r['ours']:.0f} TFLOP/s")
            except Exception as e:  # noqa: BLE001 (a config that does not compile or fit is reported)
                lines.append(f"- prefill 1x{length} {cfg}: failed {type(e).__name__}: {str(e)[:120]}")
    print("\n".join(lines), flush=True)
    return lines


def sweep() -> list[str]:
    lines = ["", "### Launch-shape sweep", "", *prefill_sweep()]
    for cfg in DECODE_SWEEP:
        for batch, ctx in SWEEP_DECODE:
            try:
                r = decode_case(batch, ctx, cfg, None, with_torch=False)
                lines.append(
                    f"- decode {r['shape']} {cfg}: eager {r['ours']:.0f} GB/s, graph {r['ours_graph']:.0f} GB/s"
                )
            except Exception as e:  # noqa: BLE001
                lines.append(f"- decode {cfg}: failed {type(e).__name__}: {str(e)[:120]}")
    for batch, ctx, splits in SPLITS_SWEEP:
        try:
            r = decode_case(batch, ctx, DecodeConfig(), splits, with_torch=False)
            lines.append(
                f"- decode {r['shape']} (forced): eager {r['ours']:.0f} GB/s, graph {r['ours_graph']:.0f} GB/s"
            )
        except Exception as e:  # noqa: BLE001
            lines.append(f"- decode B={batch} ctx={ctx} splits={splits}: failed {type(e).__name__}: {str(e)[:120]}")
    print("\n".join(lines), flush=True)
    return lines


def markdown(ceil: dict, rows: list[dict], meta: dict) -> str:
    out = [
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; {meta['date']}.",
        f"Ceilings measured in this run: device-to-device copy **{ceil['copy_GBps']:.0f} GB/s** "
        f"(read + write), bf16 matmul 8192^3 **{ceil['matmul_TFLOPs']:.0f} TFLOP/s**.",
        "",
        "Eager: each call launched from Python, as the engine does without CUDA graphs. Graph: one",
        "CUDA-graph replay per call (decode only), i.e. GPU time without Python launch overhead.",
        "",
        "| kernel | shape | ours ms | ours | % of ceiling | torch ms | torch | ours / torch "
        "| graph: ours ms | ours | % of ceiling | torch ms | ours / torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kernel"] == "FAILED":
            out.append(f"| FAILED | {r['shape']} |" + " |" * 11)
            continue
        ceiling = ceil["copy_GBps"] if r["unit"] == "GB/s" else ceil["matmul_TFLOPs"]
        cells = [r["kernel"], r["shape"], f"{r['ours_ms']:.4f}", f"{r['ours']:.0f} {r['unit']}"]
        cells.append(f"{100 * r['ours'] / ceiling:.0f}%")
        has_torch = r["torch_ms"] is not None
        cells += [f"{r['torch_ms']:.4f}", f"{r['torch']:.0f} {r['unit']}"] if has_torch else ["", ""]
        cells.append(f"{r['torch_ms'] / r['ours_ms']:.2f}x" if has_torch else "")
        if r.get("ours_graph_ms") is not None:
            cells += [f"{r['ours_graph_ms']:.4f}", f"{r['ours_graph']:.0f} {r['unit']}"]
            cells.append(f"{100 * r['ours_graph'] / ceiling:.0f}%")
            tg = r["torch_graph_ms"]
            cells += [f"{tg:.4f}", f"{tg / r['ours_graph_ms']:.2f}x"] if tg is not None else ["", ""]
        else:
            cells += [""] * 5
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# --decode-sweep: launch shapes x split counts at batch 1 x 32k (graph replays), then how the state
# of the L2 cache before a call changes the decode figures (see l2_study).
DECODE_LONG = (1, 32768)
DECODE_LONG_SHAPES = [(64, 2, 4), (64, 2, 3), (64, 1, 4), (32, 2, 4), (32, 2, 6), (128, 4, 3)]
DECODE_LONG_SPLITS = [32, 48, 64]
L2_CASES = [(1, 32768), (1, 8192), (16, 8192), (64, 2048)]


def decode_sweep() -> list[str]:
    lines = ["", "### Decode sweep (graph replays; GB/s as in the table)", ""]

    def emit(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    batch, ctx = DECODE_LONG
    best = (0.0, "")
    for block_n, warps, stages in DECODE_LONG_SHAPES:
        for splits in DECODE_LONG_SPLITS:
            cfg = DecodeConfig(block_n=block_n, num_warps=warps, num_stages=stages)
            name = f"B={batch} ctx={ctx} block_n={block_n} warps={warps} stages={stages} splits={splits}"
            try:
                r = decode_case(batch, ctx, cfg, splits, with_torch=False)
                emit(f"- {name}: graph {r['ours_graph']:.0f} GB/s ({r['ours_graph_ms'] * 1e3:.1f} us)")
                if r["ours_graph"] > best[0]:
                    best = (r["ours_graph"], name)
            except Exception as e:  # noqa: BLE001 (a shape that does not compile or fit is reported)
                emit(f"- {name}: failed {type(e).__name__}: {str(e)[:120]}")
    emit(f"- best at B={batch} ctx={ctx}: {best[1]}: {best[0]:.0f} GB/s")
    return lines + (l2_study() if DEV.type == "cuda" else [])


# --small-grid: latency of decode attention where batch x kv heads x splits is far below the SM count
# (batch 1 decode steps; at tp=2 each rank has half the heads). Graph replays, dirty flush, in us.
SMALL_GRID_CASES = [(1, 512), (1, 2048), (1, 4096), (4, 2048)]
SMALL_GRID_HEADS = [(32, 8), (16, 4)]  # Llama-3-8B at tp=1, and per rank at tp=2
SMALL_GRID_SPLITS = [1, 2, 4, 8, 16, 32]
SMALL_GRID_SHAPES = [(64, 2, 4), (32, 2, 4), (16, 1, 4)]  # (block_n, warps, stages)


def small_grid_sweep() -> list[str]:
    global HQ, HK
    lines = ["", "### Decode attention, small grids (graph replay, us; * = the default split count)", ""]
    saved = HQ, HK
    try:
        for HQ, HK in SMALL_GRID_HEADS:  # noqa: B007 (decode_case reads the globals)
            for batch, ctx in SMALL_GRID_CASES:
                num_sms = torch.cuda.get_device_properties(DEV).multi_processor_count if DEV.type == "cuda" else 4
                default = num_splits_for(batch, HK, ctx, num_sms, DecodeConfig())
                for block_n, warps, stages in SMALL_GRID_SHAPES:
                    cfg = DecodeConfig(block_n=block_n, num_warps=warps, num_stages=stages)
                    cells = []
                    for splits in SMALL_GRID_SPLITS:
                        if ctx // splits < block_n:
                            continue
                        r = decode_case(batch, ctx, cfg, splits, with_torch=False)
                        star = "*" if splits == default and (block_n, warps, stages) == (64, 2, 4) else ""
                        cells.append(f"{splits}{star}: {r['ours_graph_ms'] * 1e3:.1f}")
                    line = f"- Hq={HQ} Hk={HK} B={batch} ctx={ctx} block_n={block_n} warps={warps}: " + ", ".join(cells)
                    lines.append(line)
                    print(line, flush=True)
    finally:
        HQ, HK = saved
    return lines


def bench_flushed(fn: Callable[[], object], flush: str, iters: int = 100) -> float:
    """Median ms of fn after putting L2 in a known state before each call.

    flush="dirty": zero a 256 MB buffer first (what triton's do_bench does): L2 is left full of
    dirty lines, which the timed call must write back to DRAM as its reads evict them.
    flush="clean": read a 256 MB buffer first: L2 holds only clean, unrelated lines (cold, as
    after a weight matmul in a decode step). flush="none": whatever the previous call left.
    """
    buf = _flush_buffer()
    action = {"dirty": buf.zero_, "clean": lambda: buf.sum(), "none": lambda: None}[flush]
    fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for start, end in zip(starts, ends, strict=True):
        action()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))[iters // 2]


@functools.cache
def _flush_buffer() -> torch.Tensor:
    return torch.empty(64 << 20, dtype=torch.int32, device=DEV)  # 256 MB, 5x the H200's L2


def _graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """fn captured in a CUDA graph (after a warm-up on a side stream); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def l2_study() -> list[str]:
    """Copy ceiling, a plain read of the same bytes, decode attention (ours, graph) and SDPA on
    contiguous K/V, each timed after a dirty, a clean and no L2 flush."""
    lines = ["", "### L2 state before the call (graph replays, median of 100)", ""]
    lines.append("| case | bytes | dirty flush GB/s | clean flush GB/s | no flush GB/s |")
    lines.append("|---|---:|---:|---:|---:|")

    def measure(name: str, nbytes: float, fn: Callable[[], object], graph: bool = True) -> dict:
        call = _graphed(fn) if graph else fn
        r = {f: nbytes / (bench_flushed(call, f) * 1e-3) / GB for f in ("dirty", "clean", "none")}
        line = f"| {name} | {nbytes / 1e6:.0f} MB | {r['dirty']:.0f} | {r['clean']:.0f} | {r['none']:.0f} |"
        lines.append(line)
        print(line, flush=True)
        return r

    ceiling = _l2_copy(measure)
    for batch, ctx in L2_CASES:
        ours = _l2_decode(measure, batch, ctx)
        pct = {f: f"{100 * ours[f] / ceiling[f]:.0f}%" for f in ours}
        lines.append(f"| ours / copy ceiling, same flush | | {pct['dirty']} | {pct['clean']} | {pct['none']} |")
    return lines


def _l2_copy(measure) -> dict:
    src = torch.randn(COPY_ELEMS, device=DEV)
    dst = torch.empty_like(src)
    # Launched eagerly: captured in a graph, a same-dtype copy becomes a memcpy node that the copy
    # engines run at ~2.7 TB/s instead of the ~4.2 TB/s of the SM copy kernel (seen on the H200).
    return measure("copy 1 GiB fp32 (read + write), eager", 2 * src.numel() * 4, lambda: dst.copy_(src), graph=False)


def _l2_decode(measure, batch: int, ctx: int) -> dict:
    k_cache, v_cache, req_to_slot, rows = token_table([ctx] * batch)
    lens = torch.full((batch,), ctx, device=DEV, dtype=torch.int32)
    q = randn(batch, HQ, D)
    cfg = DecodeConfig()
    splits = num_splits_for(batch, HK, ctx, torch.cuda.get_device_properties(DEV).multi_processor_count, cfg)
    nbytes = batch * ctx * HK * D * 2 * 2 + 2 * q.numel() * 2 + batch * ctx * 4

    def ours():
        return decode_attention_with_splits(q, k_cache, v_cache, req_to_slot, rows, lens, ctx, D**-0.5, splits, cfg)

    result = measure(f"decode ours B={batch} ctx={ctx} splits={splits}", nbytes, ours)
    kc = k_cache[req_to_slot[:batch].long()].permute(0, 2, 1, 3).contiguous()
    vc = v_cache[req_to_slot[:batch].long()].permute(0, 2, 1, 3).contiguous()
    measure(f"torch sum of the same K/V bytes, B={batch} ctx={ctx}", kc.numel() * 4, lambda: kc.sum() + vc.sum())
    qs = q[:, :, None, :]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        measure(f"decode SDPA contiguous B={batch} ctx={ctx}", nbytes, lambda: sdpa(qs, kc, vc, enable_gqa=True))
    except RuntimeError as e:
        print(f"SDPA failed: {e}", flush=True)
    return result


def _smoke_shapes() -> None:
    global DEV, HQ, HK, D, HIDDEN, INTER, ROWS, MAX_POS, COPY_ELEMS, MATMUL_N, SWEEP_DECODE
    assert os.environ.get("TRITON_INTERPRET") == "1", "--smoke needs TRITON_INTERPRET=1"
    DEV = torch.device("cpu")
    HQ, HK, D, HIDDEN, INTER = 4, 2, 32, 64, 96
    ROWS, MAX_POS, COPY_ELEMS, MATMUL_N = 32, 512, 1 << 16, 64
    SWEEP_PREFILL_LENS[:], SWEEP_DECODE = [100], [(2, 300)]
    global DECODE_LONG, DECODE_LONG_SHAPES, DECODE_LONG_SPLITS
    DECODE_LONG, DECODE_LONG_SHAPES, DECODE_LONG_SPLITS = (1, 300), [(16, 2, 1)], [3]
    SMALL_GRID_CASES[:], SMALL_GRID_HEADS[:], SMALL_GRID_SPLITS[:] = [(1, 64)], [(4, 2), (2, 1)], [1, 2]
    SMALL_GRID_SHAPES[:] = [(16, 1, 1)]
    SPLITS_SWEEP[:] = [(2, 300, 3)]
    PREFILL_SWEEP[:] = [PrefillConfig(32, 16, 4, 1)]
    DECODE_SWEEP[:] = [DecodeConfig(block_n=16, num_warps=4, num_stages=1)]


def _write_sweep(out: Path | None, meta: dict, lines: list[str]) -> None:
    """A sweep's lines under the device line, to `out` (the sweeps print their lines as they go)."""
    if out:
        header = f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}; {meta['date']}."
        out.write_text("\n".join([header, *lines]) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="markdown table")
    ap.add_argument("--json", type=Path, help="raw numbers")
    ap.add_argument("--sweep", action="store_true", help="also try several launch shapes")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--decode-sweep", action="store_true", help="only the decode sweep: batch 1 x 32k shapes, L2 state")
    ap.add_argument("--small-grid", action="store_true", help="only decode attention latency at small grids")
    ap.add_argument("--prefill-sweep", action="store_true", help="only the prefill kernel's launch shapes (~1 min)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU under TRITON_INTERPRET=1")
    args = ap.parse_args()
    torch.manual_seed(0)
    batches, contexts = [1, 16, 64, 256], [512, 2048, 8192, 32768]
    prefill_lens = [[512], [2048], [4096], [8192], [16384], [2048] * 8, [3000, 517, 9000, 1, 2000]]
    if args.quick:
        batches, contexts, prefill_lens = [1, 64], [2048, 32768], [[2048], [16384]]
    if args.smoke:
        _smoke_shapes()
        batches, contexts, prefill_lens = [1, 3], [40, 300], [[64], [17, 90]]
    meta = {
        "device": torch.cuda.get_device_name(DEV) if DEV.type == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if args.prefill_sweep:
        _write_sweep(args.out, meta, prefill_sweep())
        return
    if args.small_grid:
        text = "\n".join(small_grid_sweep()) + "\n"
        if args.out:
            args.out.write_text(text)
        return
    if args.decode_sweep:
        print(meta, flush=True)
        _write_sweep(args.out, meta, decode_sweep())
        return
    ceil = ceilings()
    print(meta, ceil, flush=True)
    rows = elementwise_rows()
    for batch in batches:
        for ctx in contexts:
            attempt(rows, lambda: decode_case(batch, ctx, DecodeConfig(), None, with_torch=True))  # noqa: B023
    for lens in prefill_lens:
        attempt(rows, lambda: prefill_case(lens, None, with_torch=True))  # noqa: B023
    extra = sweep() if args.sweep else []
    text = markdown(ceil, rows, meta) + "\n".join(extra) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "ceilings": ceil, "rows": rows}, indent=1))
    assert all(r["kernel"] != "FAILED" and math.isfinite(r["ours"]) for r in rows), "some cases failed"


if __name__ == "__main__":
    main()
