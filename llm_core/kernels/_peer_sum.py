"""The push / signal / wait / sum handshake over symmetric memory that the fused all-reduces share
(kernels/all_reduce_norm.py per row, the GEMV's residual epilogue per column block: kernels/_gemv_kernel.py;
the protocol and why it is safe are in all_reduce_norm.py's docstring)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def peer_sum(
    x,  # this program's values, in the activation dtype
    slot,  # offsets of x in a staging half, rank 0's part: (epoch % 2) * WORLD * rank_stride + position
    mask,
    stage_ptrs,  # [WORLD] int64: each rank's staging buffer [2, WORLD, rank_stride] of x's dtype
    flag_ptrs,  # [WORLD] int64: each rank's flags [flag rows, WORLD] int64
    flag_row,  # this program's row of the flags
    epoch,  # this program's call count, the same on every rank
    rank,
    rank_stride,
    WORLD: tl.constexpr,
):
    """-> sum over ranks of x in rank order (fp32): the same bits on every rank."""
    for peer in tl.static_range(WORLD):
        buffer = tl.load(stage_ptrs + peer).to(tl.pointer_type(x.dtype))
        tl.store(buffer + slot + rank * rank_stride, x, mask=mask)
    tl.debug_barrier()  # every thread's part is pushed before the signal releases it

    for peer in tl.static_range(WORLD):
        if peer != rank:
            peer_flags = tl.load(flag_ptrs + peer).to(tl.pointer_type(tl.int64))
            tl.atomic_xchg(peer_flags + flag_row * WORLD + rank, epoch, sem="release", scope="sys")
    own_flags = tl.load(flag_ptrs + rank).to(tl.pointer_type(tl.int64))
    for peer in tl.static_range(WORLD):
        if peer != rank:
            flag = own_flags + flag_row * WORLD + peer
            while tl.load(flag, volatile=True) < epoch:
                pass
            tl.atomic_add(flag, 0, sem="acquire", scope="sys")  # orders the reads below after the peer's stores
    tl.debug_barrier()

    total = tl.zeros(x.shape, dtype=tl.float32)
    own_buffer = tl.load(stage_ptrs + rank).to(tl.pointer_type(x.dtype))
    for peer in tl.static_range(WORLD):  # rank order: the same sum on every rank
        # .cg: from L2, where the peers' stores landed, never a stale L1 line of an earlier call
        total += tl.load(own_buffer + slot + peer * rank_stride, mask=mask, other=0.0, cache_modifier=".cg").to(
            tl.float32
        )
    return total
