"""Rotary position embedding, rotate-half (NeoX / HF Llama) style: in place on q and k
(`apply_rotary`), or on q in place with the rotated k and v written straight into their KV-cache
slots (`rotary_store_kv`: one kernel where a decoder layer would launch two)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import check_device, check_float, check_index, pdl_follower_options, pdl_prologue


@triton.jit
def _rotate_heads(
    x_ptr,  # this token's first head
    head_stride,
    num_heads,
    cos,  # [1, HALF_BLOCK] fp32
    sin,
    half,
    BLOCK_H: tl.constexpr,
    HALF_BLOCK: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HALF_BLOCK)[None, :]
    mask = (heads < num_heads) & (dims < half)
    ptr1 = x_ptr + heads * head_stride + dims
    x1 = tl.load(ptr1, mask=mask, other=0.0)
    x2 = tl.load(ptr1 + half, mask=mask, other=0.0)
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    tl.store(ptr1, (x1f * cos - x2f * sin).to(x1.dtype), mask=mask)
    tl.store(ptr1 + half, (x2f * cos + x1f * sin).to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,  # [T, Hq, D]
    k_ptr,  # [T, Hk, D]
    positions_ptr,  # [T]
    cos_sin_ptr,  # [P, D] fp32: cos | sin
    q_token_stride,
    q_head_stride,
    k_token_stride,
    k_head_stride,
    cos_sin_stride,
    num_q_heads,
    num_k_heads,
    half,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    HALF_BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_BLOCK)[None, :]
    cs_mask = dims < half
    cos = tl.load(cos_sin_ptr + pos * cos_sin_stride + dims, mask=cs_mask, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * cos_sin_stride + half + dims, mask=cs_mask, other=0.0)
    q_tok_ptr = q_ptr + token * q_token_stride
    k_tok_ptr = k_ptr + token * k_token_stride
    _rotate_heads(q_tok_ptr, q_head_stride, num_q_heads, cos, sin, half, BLOCK_HQ, HALF_BLOCK)
    _rotate_heads(k_tok_ptr, k_head_stride, num_k_heads, cos, sin, half, BLOCK_HK, HALF_BLOCK)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """In place. q: [T, Hq, D], k: [T, Hk, D] (views allowed), positions: [T] int, cos_sin: [P, D] fp32."""
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2]
    num_tokens, num_q_heads, head_dim = q.shape
    assert head_dim % 2 == 0 and q.stride(2) == 1 and k.stride(2) == 1, "last dim must be contiguous"
    assert positions.shape == (num_tokens,)
    assert cos_sin.dim() == 2 and cos_sin.shape[1] == head_dim and cos_sin.dtype == torch.float32
    assert cos_sin.stride(1) == 1 and q.dtype == k.dtype
    check_float(q)
    check_index(positions)
    check_device(q, k, positions, cos_sin)
    if num_tokens == 0:
        return
    half = head_dim // 2
    block_hq = triton.next_power_of_2(num_q_heads)
    _rotary_kernel[(num_tokens,)](
        q,
        k,
        positions,
        cos_sin,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_sin.stride(0),
        num_q_heads,
        k.shape[1],
        half,
        BLOCK_HQ=block_hq,
        BLOCK_HK=triton.next_power_of_2(k.shape[1]),
        HALF_BLOCK=triton.next_power_of_2(half),
        num_warps=4 if block_hq * half >= 1024 else 1,
    )


@triton.jit
def _rotary_store_kv_kernel(
    q_ptr,  # [T, Hq, D], rotated in place
    k_ptr,  # [T, Hk, D], read only
    v_ptr,  # [T, Hk, D]
    positions_ptr,  # [T]
    cos_sin_ptr,  # [P, D] fp32: cos | sin
    k_cache_ptr,  # [S + 1, Hk, D] contiguous
    v_cache_ptr,
    slots_ptr,  # [T]
    q_token_stride,
    q_head_stride,
    k_token_stride,
    k_head_stride,
    v_token_stride,
    v_head_stride,
    cos_sin_stride,
    num_q_heads,
    half,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    HALF_BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,  # launched with launch_pdl (after the qkv GEMV): wait for it first
):
    pdl_prologue(PDL, False)
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_BLOCK)[None, :]
    cs_mask = dims < half
    cos = tl.load(cos_sin_ptr + pos * cos_sin_stride + dims, mask=cs_mask, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * cos_sin_stride + half + dims, mask=cs_mask, other=0.0)
    _rotate_heads(q_ptr + token * q_token_stride, q_head_stride, num_q_heads, cos, sin, half, BLOCK_HQ, HALF_BLOCK)

    heads = tl.arange(0, BLOCK_HK)[:, None]
    dst = slot * (NUM_KV_HEADS * HEAD_DIM) + heads * HEAD_DIM  # [BLOCK_HK, 1]
    mask = (heads < NUM_KV_HEADS) & cs_mask
    k1_ptr = k_ptr + token * k_token_stride + heads * k_head_stride + dims
    k1 = tl.load(k1_ptr, mask=mask, other=0.0)
    k2 = tl.load(k1_ptr + half, mask=mask, other=0.0)
    k1f = k1.to(tl.float32)
    k2f = k2.to(tl.float32)
    # Rounded to k's dtype first, exactly like apply_rotary followed by store_kv.
    cache_dtype = k_cache_ptr.dtype.element_ty
    tl.store(k_cache_ptr + dst + dims, (k1f * cos - k2f * sin).to(k1.dtype).to(cache_dtype), mask=mask)
    tl.store(k_cache_ptr + dst + half + dims, (k2f * cos + k1f * sin).to(k1.dtype).to(cache_dtype), mask=mask)

    full = tl.arange(0, BLOCK_D)[None, :]
    v_mask = (heads < NUM_KV_HEADS) & (full < HEAD_DIM)
    v = tl.load(v_ptr + token * v_token_stride + heads * v_head_stride + full, mask=v_mask)
    tl.store(v_cache_ptr + dst + full, v.to(v_cache_ptr.dtype.element_ty), mask=v_mask)


def rotary_store_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """q rotated in place; k_cache[slots] = rotated k, v_cache[slots] = v; k itself is left as it was.

    q: [T, Hq, D], k, v: [T, Hk, D] (views allowed), positions, slots: [T] int, cos_sin: [P, D] fp32,
    caches: [S + 1, Hk, D] contiguous."""
    assert q.dim() == 3 and k.dim() == 3 and k.shape == v.shape and q.shape[0] == k.shape[0]
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert k.shape[2] == head_dim and head_dim % 2 == 0
    assert q.stride(2) == 1 and k.stride(2) == 1 and v.stride(2) == 1, "last dim must be contiguous"
    assert positions.shape == (num_tokens,) and slots.shape == (num_tokens,)
    assert cos_sin.dim() == 2 and cos_sin.shape[1] == head_dim and cos_sin.dtype == torch.float32
    assert cos_sin.stride(1) == 1 and q.dtype == k.dtype
    assert k_cache.shape == v_cache.shape and k_cache.shape[1:] == (num_kv_heads, head_dim)
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    check_float(q, k, v, k_cache, v_cache)
    check_index(positions, slots)
    check_device(q, k, v, positions, cos_sin, k_cache, v_cache, slots)
    if num_tokens == 0:
        return
    half = head_dim // 2
    block_hq = triton.next_power_of_2(num_q_heads)
    _rotary_store_kv_kernel[(num_tokens,)](
        q,
        k,
        v,
        positions,
        cos_sin,
        k_cache,
        v_cache,
        slots,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        cos_sin.stride(0),
        num_q_heads,
        half,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_HQ=block_hq,
        BLOCK_HK=triton.next_power_of_2(num_kv_heads),
        HALF_BLOCK=triton.next_power_of_2(half),
        BLOCK_D=triton.next_power_of_2(head_dim),
        num_warps=4 if block_hq * half >= 1024 else 1,
        **pdl_follower_options(q.device),
    )
