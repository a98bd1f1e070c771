"""The GEMV kernel (wrappers, launch configs and the whole design: kernels/gemv.py) and its parts: the RMSNorm
of its input, its epilogues, the L2 prefetch.

`_rstd` and `_normed` (the `exact` norm mode) let the GEMV read the residual stream itself and normalise each
element as it loads it, rounded exactly like `rms_norm` (normed in fp32, rounded to the activation dtype, times
the norm weight, rounded again), so the RMSNorm before a projection needs no kernel of its own. The `late` mode
(NORM_LATE) multiplies by the norm weight only and scales the sums by 1/rms, summed in the same loop, at the end.

`_residual_epilogue` returns `residual + y` (+ bias), rounded like `linear` then `x + residual`; with
WORLD > 1 ranks it first all-reduces this column block of y across them, the handshake of
kernels/all_reduce_norm.py per column block instead of per row:

1. epoch = ++epochs[block] (rank-local; every rank makes the same calls with the same launch config,
   so the counts agree), and push the block, rounded to the activation dtype, into slot
   [epoch % 2, rank, cols] of every rank's staging buffer ([2, WORLD, N] of symmetric memory);
2. write `epoch` into flag[block, rank] of every peer (release, system scope), then poll the own
   flag[block, peer] of each peer until it reaches `epoch` (one acquire once it has);
3. sum the pushed blocks in rank order (fp32, rounded once: every rank computes the same bits).

As there, flags only grow and the two halves alternate, so a peer that has moved on to the next call
never overwrites a block this rank is still reading. A staging buffer, its flags and epochs belong to one
call site (one weight shape, hence one launch config): blocks of another BLOCK_N would cover other columns.
A program waits only for the program of the same block on each peer, which every GPU schedules in grid
order, so a set of programs waiting on one GPU is always matched by ones that have pushed on the others.
"""

from __future__ import annotations

import triton
import triton.language as tl

from llm_core.kernels._checks import gdc_launch_dependents, gdc_wait
from llm_core.kernels._peer_sum import peer_sum


@triton.jit
def _prefetch_l2(ptrs):
    tl.inline_asm_elementwise(
        "prefetch.global.L2::evict_last [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def _rstd(x_ptr, K, eps, BLOCK_K: tl.constexpr):
    # 1 / sqrt(mean(x^2) + eps) over the whole row x [K] (fp32), as rms_norm computes it.
    ks = tl.arange(0, BLOCK_K)
    squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        xk = tl.load(x_ptr + k0 + ks, mask=k0 + ks < K, other=0.0).to(tl.float32)
        squares += xk * xk
    return tl.rsqrt(tl.sum(squares, axis=0) / K + eps)


@triton.jit
def _normed(x, g, rstd, dtype: tl.constexpr):
    # rms_norm of loaded elements x (fp32) with norm weights g (fp32), rounded as the separate kernel rounds.
    return (g * (x * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)


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


@triton.jit
def _finish(
    y, y_up, b_ptr, residual_ptr, out_ptr, cols, col_mask, block, stage_ptrs, flag_ptrs, epochs_ptr, rank, N,
    HAS_BIAS: tl.constexpr, SILU: tl.constexpr, RESIDUAL: tl.constexpr, WORLD: tl.constexpr,
):  # fmt: skip
    # The epilogue of one column block's finished sums (the last split's program with split-K).
    if RESIDUAL:
        _residual_epilogue(
            y, b_ptr, residual_ptr, out_ptr, cols, col_mask, block, stage_ptrs, flag_ptrs, epochs_ptr, rank, N,
            HAS_BIAS, WORLD,
        )  # fmt: skip
    else:
        _epilogue(y, y_up, b_ptr, out_ptr, cols, col_mask, N, HAS_BIAS, SILU)


@triton.jit
def _residual_epilogue(
    y,  # [BLOCK_N] fp32: this rank's product for the block
    b_ptr,
    residual_ptr,  # [N]
    out_ptr,  # [N]: residual + sum over ranks of y (+ bias)
    cols,
    col_mask,
    block,
    stage_ptrs,  # [WORLD] int64: rank p's staging buffer [2, WORLD, N]
    flag_ptrs,  # [WORLD] int64: rank p's flags [blocks, WORLD] int64
    epochs_ptr,  # [blocks] int64, this rank's calls per block so far
    rank,
    N,
    HAS_BIAS: tl.constexpr,
    WORLD: tl.constexpr,
):
    dtype = out_ptr.dtype.element_ty
    if HAS_BIAS:  # one rank's bias only: the wrapper takes biases at WORLD == 1 alone
        y += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    part = y.to(dtype)
    if WORLD > 1:
        epoch = tl.load(epochs_ptr + block) + 1
        tl.store(epochs_ptr + block, epoch)
        slot = (epoch % 2) * WORLD * N + cols  # + source rank * N
        total = peer_sum(part, slot, col_mask, stage_ptrs, flag_ptrs, block, epoch, rank, N, WORLD)
        part = total.to(dtype)
    res = tl.load(residual_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + cols, (part.to(tl.float32) + res).to(dtype), mask=col_mask)


@triton.jit
def _gemv_kernel(
    x_ptr,  # [K]: one row (with NORM the residual stream, normalised here)
    w_ptr,  # [N_W, K] contiguous: N_W = N, or 2 N with SILU ([gate | up])
    b_ptr,  # [N_W] or dummy
    out_ptr,  # [N]
    part_ptr,  # [SPLIT_K (x 2 with SILU), N] fp32 workspace (SPLIT_K > 1)
    count_ptr,  # [cdiv(N, BLOCK_N)] int32, zero between calls (SPLIT_K > 1)
    norm_w_ptr,  # [K] RMSNorm weight (NORM)
    residual_ptr,  # [N] (RESIDUAL)
    stage_ptrs,  # [WORLD] int64 (RESIDUAL, WORLD > 1): see _residual_epilogue above
    flag_ptrs,  # [WORLD] int64
    epochs_ptr,  # [cdiv(N, BLOCK_N)] int64
    rank,
    N,
    K,
    K_PER_SPLIT,  # multiple of BLOCK_K
    PREFETCH_PROGRAMS,  # column blocks below this prefetch their weights into L2 before the PDL wait
    eps,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    NORM: tl.constexpr,  # y = rms_norm(x) W^T: the norm applied to x as it is loaded
    NORM_LATE: tl.constexpr,  # (NORM, SPLIT_K == 1) y = rstd * sum(w * g * x): rstd from the same loop
    RESIDUAL: tl.constexpr,  # out = residual + (all-reduced over WORLD ranks) y
    WORLD: tl.constexpr,
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
    dtype = x_ptr.dtype.element_ty
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
    if NORM and not NORM_LATE:
        rstd = _rstd(x_ptr, K, eps, BLOCK_K)  # the whole row: every program (and split) computes it
    if NORM_LATE:
        squares = tl.zeros((BLOCK_K,), dtype=tl.float32)

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    if SILU:
        acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(k_begin, k_end, BLOCK_K, num_stages=NUM_STAGES):
        k = k0 + ks
        if EVEN_K:
            x = tl.load(x_ptr + k).to(tl.float32)
            if NORM:
                g = tl.load(norm_w_ptr + k).to(tl.float32)
            w_mask = col_mask[:, None]
        else:
            k_mask = k < k_end
            x = tl.load(x_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
            if NORM:
                g = tl.load(norm_w_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
            w_mask = col_mask[:, None] & k_mask[None, :]
        if NORM_LATE:
            squares += x * x
            x = g * x
        elif NORM:
            x = _normed(x, g, rstd, dtype)
        w = tl.load(w_rows + k[None, :], mask=w_mask, other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * x[None, :]
        if SILU:
            u = tl.load(up_rows + k[None, :], mask=w_mask, other=0.0, eviction_policy="evict_first")
            acc_up += u.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)  # [BLOCK_N]
    y_up = tl.sum(acc_up, axis=1) if SILU else y
    if NORM_LATE:
        rstd = tl.rsqrt(tl.sum(squares, axis=0) / K + eps)
        y = y * rstd
        if SILU:
            y_up = y_up * rstd

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
            _finish(
                y, y_up, b_ptr, residual_ptr, out_ptr, cols, col_mask, pid_n, stage_ptrs, flag_ptrs, epochs_ptr, rank,
                N, HAS_BIAS, SILU, RESIDUAL, WORLD,
            )  # fmt: skip
    else:
        _finish(
            y, y_up, b_ptr, residual_ptr, out_ptr, cols, col_mask, pid_n, stage_ptrs, flag_ptrs, epochs_ptr, rank,
            N, HAS_BIAS, SILU, RESIDUAL, WORLD,
        )  # fmt: skip
