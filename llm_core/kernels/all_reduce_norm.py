"""All-reduce fused with the residual add and RMSNorm that follow it (tensor-parallel decode).

A row-parallel projection (o_proj, down_proj) leaves each rank a partial sum; the next op is always
`residual += all_reduce(partial); normed = rms_norm(residual)`. At decode sizes (a few KB per row)
both are latency-bound, so one kernel does all of it. Program `row` of rank r:

1. counts this call: epoch = ++epochs[row] (rank-local memory; every rank makes the same calls, so
   the counts agree), and pushes its partial row into slot [epoch % 2, r, row] of every rank's
   staging buffer (memory every rank has mapped: torch symmetric memory, CUDA IPC over NVLink;
   stores to a peer are posted, nothing waits for a round trip);
2. writes `epoch` into every peer's flag[row, r] (release, system scope: the pushed row is visible
   there first), then polls its own flag[row, p] of each peer until it reaches `epoch` (plain loads;
   one acquire once it has);
3. sums the rows all ranks pushed into its own buffer, in rank order (fp32, rounded once to the
   activation dtype, so every rank computes the same bits), then adds the residual and normalises
   exactly like `rms_norm.add_rms_norm`.

Flags only grow (int64), so no signal is ever reset or consumed. A peer may start its next call while
this rank still reads the row the peer pushed for this one, which is why consecutive calls use the two
halves in turn: a peer pushes into the same half again only two calls later, after passing the
handshake of the call in between, which this rank enters only once it has finished reading.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import (
    check_device,
    check_float,
    pdl_enabled,
    pdl_follower_options,
    pdl_prologue,
)


@triton.jit
def _all_reduce_add_rms_norm_kernel(
    x_ptr,  # [T, H] this rank's partial sums
    residual_ptr,  # [T, H]
    weight_ptr,  # [H]
    out_ptr,  # [T, H] contiguous
    residual_out_ptr,  # [T, H] contiguous
    buffer_ptrs,  # [WORLD] int64: rank p's staging buffer [2, WORLD, max_rows, H] (x's dtype)
    flag_ptrs,  # [WORLD] int64: rank p's flags [max_rows, WORLD] int64, flag[row, q] = q's latest epoch
    epochs_ptr,  # [max_rows] int64, this rank's calls per row so far
    rank,
    rank_stride,  # max_rows * H
    hidden,
    x_row_stride,
    residual_row_stride,
    eps,
    WORLD: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL_TRIGGER: tl.constexpr,  # let a PDL-launched GEMV after this kernel be scheduled now (_checks)
    PDL: tl.constexpr,  # launched with launch_pdl: wait for the previous kernel first
):
    pdl_prologue(PDL, PDL_TRIGGER)
    row = tl.program_id(0)
    row64 = row.to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    epoch = tl.load(epochs_ptr + row) + 1
    tl.store(epochs_ptr + row, epoch)
    x = tl.load(x_ptr + row64 * x_row_stride + cols, mask=mask, other=0.0)
    slot = (epoch % 2) * WORLD * rank_stride + row64 * hidden + cols  # + source rank * rank_stride
    for peer in tl.static_range(WORLD):
        buffer = tl.load(buffer_ptrs + peer).to(tl.pointer_type(x.dtype))
        tl.store(buffer + slot + rank * rank_stride, x, mask=mask)
    tl.debug_barrier()  # every thread's part of the row is pushed before the signal releases it

    for peer in tl.static_range(WORLD):
        if peer != rank:
            peer_flags = tl.load(flag_ptrs + peer).to(tl.pointer_type(tl.int64))
            tl.atomic_xchg(peer_flags + row * WORLD + rank, epoch, sem="release", scope="sys")
    own_flags = tl.load(flag_ptrs + rank).to(tl.pointer_type(tl.int64))
    for peer in tl.static_range(WORLD):
        if peer != rank:
            flag = own_flags + row * WORLD + peer
            while tl.load(flag, volatile=True) < epoch:
                pass
            tl.atomic_add(flag, 0, sem="acquire", scope="sys")  # orders the reads below after the peer's stores
    tl.debug_barrier()

    total = tl.zeros([BLOCK], dtype=tl.float32)
    own_buffer = tl.load(buffer_ptrs + rank).to(tl.pointer_type(x.dtype))
    for peer in tl.static_range(WORLD):  # rank order: the same sum on every rank
        # .cg: from L2, where the peers' stores landed, never a stale L1 line of an earlier call
        total += tl.load(own_buffer + slot + peer * rank_stride, mask=mask, other=0.0, cache_modifier=".cg").to(
            tl.float32
        )
    res = tl.load(residual_ptr + row64 * residual_row_stride + cols, mask=mask, other=0.0)
    # Rounded like the unfused path: all_reduce -> x.dtype, then `x + residual` -> x.dtype.
    summed = (total.to(x.dtype).to(tl.float32) + res.to(tl.float32)).to(x.dtype)
    tl.store(residual_out_ptr + row64 * hidden + cols, summed, mask=mask)
    xf = summed.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / hidden
    normed = (xf * tl.rsqrt(variance + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row64 * hidden + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def all_reduce_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    buffer_ptrs: torch.Tensor,
    flag_ptrs: torch.Tensor,
    epochs: torch.Tensor,
    rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rms_norm(sum_ranks(x) + residual), sum_ranks(x) + residual), both [T, H].

    x, residual: [T, H]; buffer_ptrs / flag_ptrs: [world] int64 device addresses of every rank's
    staging buffer (2 * world * max_rows * H elements of x's dtype) and flags ([max_rows, world] int64);
    epochs: [max_rows] int64 of this rank. Flags and epochs start at zero, and every rank makes the
    same calls (same row counts) in the same order."""
    assert x.dim() == 2 and x.shape == residual.shape and weight.shape == (x.shape[1],), (x.shape, weight.shape)
    assert x.stride(1) == 1 and residual.stride(1) == 1 and weight.stride(0) == 1, "last dim must be contiguous"
    assert x.dtype == residual.dtype == weight.dtype, (x.dtype, residual.dtype, weight.dtype)
    assert buffer_ptrs.dtype == flag_ptrs.dtype == epochs.dtype == torch.int64
    assert buffer_ptrs.shape == flag_ptrs.shape and 0 <= rank < buffer_ptrs.numel()
    check_float(x)
    check_device(x, residual, weight, buffer_ptrs, flag_ptrs, epochs)
    num_rows, hidden = x.shape
    max_rows = epochs.numel()
    if num_rows > max_rows:
        raise ValueError(f"{num_rows} rows exceed the staging buffer's {max_rows}")
    out = torch.empty((num_rows, hidden), dtype=x.dtype, device=x.device)
    residual_out = torch.empty_like(out)
    if num_rows == 0:
        return out, residual_out
    block = triton.next_power_of_2(hidden)
    _all_reduce_add_rms_norm_kernel[(num_rows,)](
        x,
        residual,
        weight,
        out,
        residual_out,
        buffer_ptrs,
        flag_ptrs,
        epochs,
        rank,
        max_rows * hidden,
        hidden,
        x.stride(0),
        residual.stride(0),
        eps,
        WORLD=buffer_ptrs.numel(),
        BLOCK=block,
        PDL_TRIGGER=pdl_enabled(x.device),
        num_warps=min(max(block // 512, 1), 16),
        **pdl_follower_options(x.device),
    )
    return out, residual_out
