"""The GEMV kernel's parts (kernels/gemv.py): the RMSNorm of its input, its epilogues, the L2 prefetch.

`_rstd` and `_normed` let the GEMV read the residual stream itself and normalise each element as it
loads it, rounded exactly like `rms_norm` (normed in fp32, rounded to the activation dtype, times the
norm weight, rounded again), so the RMSNorm before a projection needs no kernel of its own.

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
        for peer in tl.static_range(WORLD):
            buffer = tl.load(stage_ptrs + peer).to(tl.pointer_type(dtype))
            tl.store(buffer + slot + rank * N, part, mask=col_mask)
        tl.debug_barrier()  # the whole block is pushed before the signal releases it
        for peer in tl.static_range(WORLD):
            if peer != rank:
                peer_flags = tl.load(flag_ptrs + peer).to(tl.pointer_type(tl.int64))
                tl.atomic_xchg(peer_flags + block * WORLD + rank, epoch, sem="release", scope="sys")
        own_flags = tl.load(flag_ptrs + rank).to(tl.pointer_type(tl.int64))
        for peer in tl.static_range(WORLD):
            if peer != rank:
                flag = own_flags + block * WORLD + peer
                while tl.load(flag, volatile=True) < epoch:
                    pass
                tl.atomic_add(flag, 0, sem="acquire", scope="sys")  # the reads below come after the peer's stores
        tl.debug_barrier()
        total = tl.zeros_like(y)
        own_buffer = tl.load(stage_ptrs + rank).to(tl.pointer_type(dtype))
        for peer in tl.static_range(WORLD):  # rank order: the same sum on every rank
            # .cg: from L2, where the peers' stores landed, never a stale L1 line of an earlier call
            total += tl.load(own_buffer + slot + peer * N, mask=col_mask, other=0.0, cache_modifier=".cg").to(
                tl.float32
            )
        part = total.to(dtype)
    res = tl.load(residual_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + cols, (part.to(tl.float32) + res).to(dtype), mask=col_mask)
