"""Linear layers at batch-1 decode: y = x W^T (+ b) for one row x, optionally fused with SiLU-and-mul.

At batch 1 a decode step's weight GEMMs are matrix-vector products: pure weight streaming. cuBLAS picks
tensor-core tiles with split-K and a separate reduce kernel for these shapes, and the halved matrices of a
tp=2 rank run well below the bandwidth of the full ones (benchmarks/RESULTS.md, session 3 profiles). Here
each program owns BLOCK_N output columns (weight rows, contiguous along K) and streams its [BLOCK_N, BLOCK_K]
weight tiles once, accumulating products in fp32 registers (CUDA cores: a GEMV has
no reuse for tensor cores to exploit).

SPLIT_K > 1 splits K over programs for matrices with few output columns. The partial sums go to an fp32
workspace; the last program of each column block (an acq_rel counter) adds them in split order (the same
bits on every run, no atomics on the values), resets the counter for the next call, and runs the epilogue.

Epilogues: the bias; `linear_silu_and_mul`, for [gate | up] weights, returns silu(gate) * up directly
(the gate and up rows of a column block are computed by the same program, rounded to the activation dtype
as a separate GEMM would, then combined like `silu_and_mul`); `linear_add` adds the residual, and
`linear_all_reduce_add` (tensor parallelism) first all-reduces each column block with the same block of
the other ranks (_gemv_kernel._residual_epilogue), so a row-parallel projection leaves the summed residual
stream. Prologue: `rms_norm_linear*` read the residual stream and apply the RMSNorm as they load it. A
decode layer at batch 1 is then qkv (norm inside), rotary + KV store, attention, o (+ all-reduce +
residual), gate_up (norm + SiLU-and-mul inside), down (+ all-reduce + residual): no norm or all-reduce
kernel of its own.

On Hopper (`_checks.pdl_enabled`) the kernel is launched with programmatic dependent launch: it can be
scheduled while the kernel before it still runs, prefetches the weights of its first column blocks into L2
(PREFETCH_BYTES in all; the weights are never written by a kernel), and waits for that kernel before it
reads x or writes anything. The results are the same bits with PDL on or off.

More than one row, shapes where the tuned table says cuBLAS is faster, and layouts the kernel does not take
go to torch (cuBLAS): with several rows this kernel would re-read the weights per row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from llm_core.kernels._checks import check_device, check_float, pdl_enabled
from llm_core.kernels._gemv_kernel import _gemv_kernel
from llm_core.kernels.gemv_tuning import _WORKSPACE, config_key, gemv_config
from llm_core.kernels.rms_norm import rms_norm
from llm_core.kernels.silu_and_mul import silu_and_mul

__all__ = [
    "RowReduce",
    "config_key",
    "gemv_config",
    "linear",
    "linear_add",
    "linear_all_reduce_add",
    "linear_silu_and_mul",
    "rms_norm_linear",
    "rms_norm_linear_silu_and_mul",
]

# LLM_CORE_GEMV=0 sends every linear layer to torch (A/B measurements).
ENABLED = os.environ.get("LLM_CORE_GEMV", "1") != "0"
# With programmatic dependent launch (_checks.pdl_enabled): weight bytes each call may prefetch into L2 while
# the previous kernel runs (LLM_CORE_GEMV_PREFETCH_MB). On 2 x H200, 4 MB was 1-5% faster than none in two
# alternating pairs of runs and 24 MB was slower than none (benchmarks/RESULTS.md, session 4).
# How rms_norm_linear* normalise (LLM_CORE_GEMV_NORM): "late" (default) scales each product by the row's
# 1/rms, summed up in the same loop over K (without split-K), so the weights stream from the first
# instruction on; the normalised activation is then never rounded to the model dtype (the unfused
# kernels round it: same values to bf16 precision, not the same bits). "exact" computes 1/rms in a first
# pass over the row and rounds each normalised element like rms_norm, as the unfused kernels do.
NORM_LATE = os.environ.get("LLM_CORE_GEMV_NORM", "late") != "exact"
PREFETCH_BYTES = int(float(os.environ.get("LLM_CORE_GEMV_PREFETCH_MB", "4")) * (1 << 20))


@dataclass(frozen=True, slots=True)
class RowReduce:
    """One call site's buffers for `linear_all_reduce_add` (models/all_reduce.py allocates them): rank p's
    staging buffer [2, world, N] (activation dtype) and flags [max_blocks, world] (int64, zero at first) in
    memory every rank has mapped, and this rank's call count per column block (int64, zero at first)."""

    stage_ptrs: torch.Tensor  # [world] int64 device addresses
    flag_ptrs: torch.Tensor  # [world] int64 device addresses
    epochs: torch.Tensor  # [max_blocks] int64
    rank: int


def _launch(x, weight, bias, out_cols: int, silu: bool, config, norm=None, residual=None, reduce=None):
    # norm: (norm weight [K], eps); residual: [1, out_cols] added in the epilogue; reduce: a RowReduce.
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
    # Prefetch at most PREFETCH_BYTES in all (the first column blocks are the ones scheduled first).
    prefetch_programs = PREFETCH_BYTES // (row_bytes * block_n * (2 if silu else 1) * split_k) if pdl else 0
    norm_weight, eps = norm if norm is not None else (out, 0.0)
    if reduce is not None:
        assert col_blocks <= reduce.epochs.numel(), (col_blocks, reduce.epochs.numel())
        stage_ptrs, flag_ptrs, epochs, rank, world = (
            reduce.stage_ptrs, reduce.flag_ptrs, reduce.epochs, reduce.rank, reduce.stage_ptrs.numel()
        )  # fmt: skip
    else:
        stage_ptrs, flag_ptrs, epochs, rank, world = out, out, out, 0, 1
    _gemv_kernel[(col_blocks, split_k)](
        x, weight, bias if bias is not None else out, out, part, counts, norm_weight,
        residual if residual is not None else out, stage_ptrs, flag_ptrs, epochs, rank,
        out_cols, k, k_per_split, prefetch_programs, eps,
        HAS_BIAS=bias is not None, SILU=silu, NORM=norm is not None,
        NORM_LATE=norm is not None and NORM_LATE and split_k == 1, RESIDUAL=residual is not None, WORLD=world,
        SPLIT_K=split_k, EVEN_K=split_k * k_per_split == k, BLOCK_N=block_n, BLOCK_K=block_k, NUM_STAGES=num_stages,
        PDL=pdl, PREFETCH_LINES=triton.next_power_of_2(triton.cdiv(row_bytes, 128)), num_warps=num_warps,
        **({"launch_pdl": True} if pdl else {}),
    )  # fmt: skip
    return out


def _takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    # One contiguous row: batch-1 decode. More rows re-read the weights per row here; cuBLAS does them better.
    return (
        ENABLED
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


def _check_norm(x: torch.Tensor, norm_weight: torch.Tensor) -> None:
    assert norm_weight.shape == (x.shape[1],) and norm_weight.stride(0) == 1, (norm_weight.shape, x.shape)
    assert norm_weight.dtype == x.dtype, (norm_weight.dtype, x.dtype)
    check_device(x, norm_weight)


def _check_residual(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> None:
    assert residual.shape == (x.shape[0], weight.shape[0]) and residual.is_contiguous(), (residual.shape, x.shape)
    assert residual.dtype == x.dtype, (residual.dtype, x.dtype)
    check_device(x, residual)


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


def rms_norm_linear(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor, bias=None, config=None
) -> torch.Tensor:
    """linear(rms_norm(x, norm_weight, eps), weight, bias): x [M, K] -> [M, N]; one kernel for one row."""
    _check(x, weight, bias, weight.shape[0])
    _check_norm(x, norm_weight)
    config = config or _pick(x, weight, bias, weight.shape[0], silu=False)
    if config is None:
        return linear(rms_norm(x, norm_weight, eps), weight, bias)
    return _launch(x, weight, bias, weight.shape[0], silu=False, config=config, norm=(norm_weight, eps))


def rms_norm_linear_silu_and_mul(
    x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: torch.Tensor, bias=None, config=None
) -> torch.Tensor:
    """linear_silu_and_mul(rms_norm(x, norm_weight, eps), weight, bias): [M, K] -> [M, I]."""
    _check(x, weight, bias, weight.shape[0])
    _check_norm(x, norm_weight)
    assert weight.shape[0] % 2 == 0, weight.shape
    config = config or _pick(x, weight, bias, weight.shape[0] // 2, silu=True)
    if config is None:
        return linear_silu_and_mul(rms_norm(x, norm_weight, eps), weight, bias)
    return _launch(x, weight, bias, weight.shape[0] // 2, silu=True, config=config, norm=(norm_weight, eps))


def linear_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, bias=None, config=None) -> torch.Tensor:
    """residual + linear(x, weight, bias), rounded like the two ops: [M, K] -> [M, N]."""
    _check(x, weight, bias, weight.shape[0])
    _check_residual(x, weight, residual)
    config = config or _pick(x, weight, bias, weight.shape[0], silu=False)
    if config is None:
        return linear(x, weight, bias) + residual
    return _launch(x, weight, bias, weight.shape[0], silu=False, config=config, residual=residual)


def linear_all_reduce_add(
    x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, reduce: RowReduce, config=None
) -> torch.Tensor | None:
    """residual + sum over ranks of x W^T for one row (a row-parallel projection, no bias), the all-reduce
    in the epilogue; None where the kernel does not take the call (the caller all-reduces itself). Every rank
    must make the same calls with the same shapes, one RowReduce per weight shape."""
    _check(x, weight, None, weight.shape[0])
    _check_residual(x, weight, residual)
    config = config or _pick(x, weight, None, weight.shape[0], silu=False)
    if config is None or triton.cdiv(weight.shape[0], config[0]) > reduce.epochs.numel():
        return None
    return _launch(x, weight, None, weight.shape[0], silu=False, config=config, residual=residual, reduce=reduce)
