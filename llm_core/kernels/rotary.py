"""Rotary position embedding, rotate-half (NeoX / HF Llama) style, in place on q and k."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import check_device, check_float, check_index


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
