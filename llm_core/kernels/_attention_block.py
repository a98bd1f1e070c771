"""One online-softmax step of attention over BLOCK_N keys read through req_to_slot, shared by
the prefill and decode attention kernels (fp32 accumulators, exp2 domain)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_block(
    acc,
    m_i,
    l_i,
    q,  # [BLOCK_M, BLOCK_D] (decode: the query heads of one kv head)
    q_pos,  # [BLOCK_M] absolute query positions (read only when CAUSAL)
    start_n,
    seq_len,  # keys at positions >= seq_len are masked
    slot_row_ptr,  # req_to_slot row of this sequence
    k_head_ptr,  # k_cache + kv_head * stride_h
    v_head_ptr,
    stride_slot,
    dims,  # [BLOCK_D]
    dim_mask,
    qk_scale,
    MASKED: tl.constexpr,  # the block may cross seq_len (or the causal diagonal)
    CAUSAL: tl.constexpr,
    EVEN_D: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASKED:
        key_mask = offs_n < seq_len
        slots = tl.load(slot_row_ptr + offs_n, mask=key_mask, other=0).to(tl.int64)
    else:
        slots = tl.load(slot_row_ptr + offs_n).to(tl.int64)
    kv_offs = slots[:, None] * stride_slot + dims[None, :]  # [BLOCK_N, BLOCK_D]
    if MASKED:
        kv_mask = key_mask[:, None] & dim_mask[None, :]
        k = tl.load(k_head_ptr + kv_offs, mask=kv_mask, other=0.0)
        v = tl.load(v_head_ptr + kv_offs, mask=kv_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_head_ptr + kv_offs)
        v = tl.load(v_head_ptr + kv_offs)
    else:
        k = tl.load(k_head_ptr + kv_offs, mask=dim_mask[None, :], other=0.0)
        v = tl.load(v_head_ptr + kv_offs, mask=dim_mask[None, :], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
    if IEEE:
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    qk = qk * qk_scale  # [rows of q, BLOCK_N], log2 units
    if MASKED:
        visible = key_mask[None, :]
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= q_pos[:, None])
        qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    if UPCAST:
        p_v = p.to(v.dtype).to(tl.float32)
        v = v.to(tl.float32)
    else:
        p_v = p.to(v.dtype)
    if IEEE:
        acc = tl.dot(p_v, v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p_v, v, acc)
    return acc, m_new, l_i
