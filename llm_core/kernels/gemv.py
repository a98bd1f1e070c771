"""Linear layers at batch-1 decode: y = x W^T (+ b) for one row x, optionally fused with SiLU-and-mul.

At batch 1 a decode step's weight GEMMs are matrix-vector products: pure weight streaming. cuBLAS picks
tensor-core tiles with split-K and a separate reduce kernel for these shapes, and the halved matrices of a
tp=2 rank run well below the bandwidth of the full ones (profiled on 2 x H200, 2026-11-22). Here
each program owns BLOCK_N output columns (weight rows, contiguous along K) and streams its [BLOCK_N, BLOCK_K]
weight tiles once, accumulating products in fp32 registers (CUDA cores: a GEMV has
no reuse for tensor cores to exploit).

SPLIT_K > 1 splits K over programs for matrices with few output columns. The partial sums go to an fp32
workspace; the last program of each column block (an acq_rel counter) adds them in split order (the same
bits on every run, no atomics on the values), resets the counter for the next call, and runs the epilogue.

Epilogues: the bias; `linear_silu_and_mul`, for [gate | up] weights, returns silu(gate) * up directly
(the gate and up rows of a column block are computed by the same program, rounded to the activation dtype
as a separate GEMM would, then combined like `silu_and_mul`).

On Hopper (`_checks.pdl_enabled`) the kernel is launched with programmatic dependent launch: it can be
scheduled while the kernel before it still runs, prefetches the weights of its first column blocks into L2
(SWITCHES.gemv_prefetch_bytes in all; the weights are never written by a kernel), and waits for that kernel before it
reads x or writes anything. The results are the same bits with PDL on or off.

More than one row, shapes where the tuned table says cuBLAS is faster, and layouts the kernel does not take
go to torch (cuBLAS): with several rows this kernel would re-read the weights per row.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import (
    SWITCHES,
    check_device,
    check_float,
    gdc_launch_dependents,
    gdc_wait,
    pdl_enabled,
)
from llm_core.kernels.silu_and_mul import silu_and_mul

# Switches (EngineConfig.gemv, .gemv_prefetch_mb, through _checks.SWITCHES): gemv off sends every linear layer
# to torch. With programmatic dependent launch, each call may prefetch that many weight bytes into L2 while the
# previous kernel runs: on 2 x H200, 4 MB was 1-5% faster than none in two alternating pairs of runs and 24 MB
# was slower than none.


@triton.jit
def _gemv_kernel(
    x_ptr,  # [K]: one row
    w_ptr,  # [N_W, K] contiguous: N_W = N, or 2 N with SILU ([gate | up])
    b_ptr,  # [N_W] or dummy
    out_ptr,  # [N]
    part_ptr,  # [SPLIT_K (x 2 with SILU), N] fp32 workspace (SPLIT_K > 1)
    count_ptr,  # [cdiv(N, BLOCK_N)] int32, zero between calls (SPLIT_K > 1)
    N,
    K,
    K_PER_SPLIT,  # multiple of BLOCK_K
    PREFETCH_PROGRAMS,  # column blocks below this prefetch their weights into L2 before the PDL wait
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # K == SPLIT_K * K_PER_SPLIT: no masks along K (16-byte loads)
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    PDL: tl.constexpr,  # launched with launch_pdl: prefetch weights, then wait for the previous kernel
    PREFETCH_LINES: tl.constexpr,  # power of 2 >= this split's 128-byte lines per weight row
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    if SILU:
        up_rows = w_rows + N.to(tl.int64) * K
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)
    if PDL:
        gdc_launch_dependents()
        if pid_n < PREFETCH_PROGRAMS:
            # The weights do not depend on the previous kernel: pull this program's rows into L2 while it runs.
            line_elems = 128 // w_ptr.dtype.element_ty.primitive_bitwidth * 8
            kk = tl.minimum(k_begin + tl.arange(0, PREFETCH_LINES) * line_elems, k_end - 1)
            rows = w_ptr + tl.minimum(cols, N - 1).to(tl.int64)[:, None] * K
            _prefetch_l2(rows + kk[None, :])
            if SILU:
                _prefetch_l2(rows + N.to(tl.int64) * K + kk[None, :])
        gdc_wait()  # x and the output buffers belong to the previous kernels' stream order

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if SILU:
        acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
        k = k0 + ks
        if EVEN_K:
            x = tl.load(x_ptr + k).to(tl.float32)[None, :]
            w_mask = col_mask[:, None]
        else:
            k_mask = k < k_end
            x = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)[None, :]
            w_mask = col_mask[:, None] & k_mask[None, :]
        w = tl.load(w_rows + k[None, :], mask=w_mask, other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x
        if SILU:
            u = tl.load(up_rows + k[None, :], mask=w_mask, other=0.0, eviction_policy="evict_first")
            acc_up += u.to(tl.float32) * x
    y = tl.sum(acc, axis=1)  # [BLOCK_N]
    y_up = tl.sum(acc_up, axis=1) if SILU else y

    if SPLIT_K > 1:
        # Partial sums out; the last program of this column block adds them in split order.
        tl.store(part_ptr + pid_k * N + cols, y, mask=col_mask)
        if SILU:
            tl.store(part_ptr + (SPLIT_K + pid_k) * N + cols, y_up, mask=col_mask)
        arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            y = tl.zeros((BLOCK_N,), dtype=tl.float32)
            y_up = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for s in range(SPLIT_K):
                y += tl.load(part_ptr + s * N + cols, mask=col_mask, other=0.0, cache_modifier=".cg")
                if SILU:
                    y_up += tl.load(part_ptr + (SPLIT_K + s) * N + cols, mask=col_mask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(count_ptr + pid_n, 0)  # ready for the next call (graph replays included)
            _epilogue(y, y_up, b_ptr, out_ptr, cols, col_mask, N, HAS_BIAS, SILU)
    else:
        _epilogue(y, y_up, b_ptr, out_ptr, cols, col_mask, N, HAS_BIAS, SILU)


@triton.jit
def _prefetch_l2(ptrs):
    tl.inline_asm_elementwise(
        "prefetch.global.L2::evict_last [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _epilogue(y, y_up, b_ptr, out_ptr, cols, col_mask, N, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    dtype = out_ptr.dtype.element_ty
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        if SILU:
            y_up += tl.load(b_ptr + N + cols, mask=col_mask, other=0.0).to(tl.float32)
    if SILU:
        # As linear() then silu_and_mul(): gate and up rounded to the activation dtype, silu rounded too.
        g = y.to(dtype).to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
        y = silu * y_up.to(dtype).to(tl.float32)
    tl.store(out_ptr + cols, y.to(dtype), mask=col_mask)


class _Workspace:
    """Split-K scratch per device: fp32 partial sums and self-resetting column-block counters.

    Created outside graph capture (the first eager call); a call that would need it during a capture before
    it exists runs without split-K instead."""

    PART_FLOATS = 1 << 20
    COUNTERS = 1 << 14

    def __init__(self) -> None:
        self._by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        buffers = self._by_device.get(device)
        if buffers is None:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return None
            buffers = (
                torch.empty(self.PART_FLOATS, dtype=torch.float32, device=device),
                torch.zeros(self.COUNTERS, dtype=torch.int32, device=device),
            )
            self._by_device[device] = buffers
        return buffers


_WORKSPACE = _Workspace()


_CONFIG_DIR = Path(__file__).parent / "configs"


@functools.cache
def _tuned_table(device: torch.device) -> dict[str, list[int] | None]:
    # benchmarks/gemv.py --write: {"n3072_k4096_silu0": [BLOCK_N, BLOCK_K, SPLIT_K, warps, stages] or null}.
    # Cached per device: read once, not on every linear call of an eager step.
    path = _CONFIG_DIR / f"gemv_{torch.cuda.get_device_name(device).replace(' ', '_')}.json"
    return json.loads(path.read_text())["configs"] if path.exists() else {}


def config_key(n: int, k: int, silu: bool) -> str:
    return f"n{n}_k{k}_silu{int(silu)}"


def gemv_config(n: int, k: int, silu: bool = False, device: torch.device | None = None):
    """(BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) for x [1, k] times W^T [k, n] (n output columns): the
    tuned entry for this GPU and shape (llm_core/kernels/configs/, written by benchmarks/gemv.py; None where
    cuBLAS measured faster), else the shape that won most of the H200 sweep."""
    if device is not None and device.type == "cuda":
        table = _tuned_table(device)
        key = config_key(n, k, silu)
        if key in table:
            return None if table[key] is None else tuple(table[key])
    return 4, min(1024, triton.next_power_of_2(k)), 1, 4, 1


def _launch(x, weight, bias, out_cols: int, silu: bool, config) -> torch.Tensor:
    m, k = x.shape
    assert m == 1, "one row (decode at batch 1)"
    out = torch.empty((1, out_cols), dtype=x.dtype, device=x.device)
    block_n, block_k, split_k, num_warps, num_stages = config
    col_blocks = triton.cdiv(out_cols, block_n)
    part, counts = out, out  # unused without split-K
    if split_k > 1:
        buffers = _WORKSPACE.get(x.device)
        if buffers is None or split_k * out_cols * 2 > buffers[0].numel() or col_blocks > buffers[1].numel():
            split_k = 1
        else:
            part, counts = buffers
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    split_k = triton.cdiv(k, k_per_split)
    pdl = pdl_enabled(x.device)
    row_bytes = k_per_split * weight.element_size()
    # Prefetch at most gemv_prefetch_bytes in all (the first column blocks are the ones scheduled first).
    program_bytes = row_bytes * block_n * (2 if silu else 1) * split_k
    prefetch_programs = SWITCHES.gemv_prefetch_bytes // program_bytes if pdl else 0
    _gemv_kernel[(col_blocks, split_k)](
        x, weight, bias if bias is not None else out, out, part, counts, out_cols, k, k_per_split, prefetch_programs,
        HAS_BIAS=bias is not None, SILU=silu, SPLIT_K=split_k, EVEN_K=split_k * k_per_split == k,
        BLOCK_N=block_n, BLOCK_K=block_k, NUM_STAGES=num_stages, PDL=pdl,
        PREFETCH_LINES=triton.next_power_of_2(triton.cdiv(row_bytes, 128)), num_warps=num_warps,
        **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return out


def _takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    # One contiguous row: batch-1 decode. More rows re-read the weights per row here; cuBLAS does them better.
    return (
        SWITCHES.gemv
        and x.dim() == 2
        and x.shape[0] == 1
        and x.stride(1) == 1
        and weight.is_contiguous()
        and weight.dtype == x.dtype
        and (bias is None or (bias.is_contiguous() and bias.dtype == x.dtype))
    )


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_rows: int) -> None:
    assert x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1], (x.shape, weight.shape)
    assert bias is None or bias.shape == (out_rows,), (None if bias is None else bias.shape, out_rows)
    check_float(x, weight)
    check_device(x, weight)


def _pick(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_cols: int, silu: bool):
    # A launch config, or None for torch (not one row, layouts the kernel does not take, or tuned so).
    if not _takes(x, weight, bias):
        return None
    return gemv_config(out_cols, x.shape[1], silu, x.device)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config=None) -> torch.Tensor:
    """x: [M, K], weight: [N, K], bias: [N] -> [M, N] (torch.nn.functional.linear). `config` forces the kernel
    (one row of x)."""
    _check(x, weight, bias, weight.shape[0])
    config = config or _pick(x, weight, bias, weight.shape[0], silu=False)
    if config is None:
        return torch.nn.functional.linear(x, weight, bias)
    return _launch(x, weight, bias, weight.shape[0], silu=False, config=config)


def linear_silu_and_mul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config=None
) -> torch.Tensor:
    """x: [M, K], weight: [2I, K] = [gate | up] rows -> silu(x gate^T) * (x up^T): [M, I]."""
    _check(x, weight, bias, weight.shape[0])
    assert weight.shape[0] % 2 == 0, weight.shape
    config = config or _pick(x, weight, bias, weight.shape[0] // 2, silu=True)
    if config is None:
        return silu_and_mul(torch.nn.functional.linear(x, weight, bias))
    return _launch(x, weight, bias, weight.shape[0] // 2, silu=True, config=config)
