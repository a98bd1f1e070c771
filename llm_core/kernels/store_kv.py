"""Scatter new tokens' K and V into their token slots of the KV cache."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import check_device, check_float, check_index


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [T, Hk, D]
    v_ptr,  # [T, Hk, D]
    k_cache_ptr,  # [S + 1, Hk, D] contiguous
    v_cache_ptr,
    slots_ptr,  # [T]
    num_tokens,
    k_token_stride,
    k_head_stride,
    v_token_stride,
    v_head_stride,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # BLOCK_T tokens per program keeps several KB of loads in flight per program.
    tokens = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_mask = tokens < num_tokens
    slots = tl.load(slots_ptr + tokens, mask=token_mask, other=0).to(tl.int64)
    t3 = tokens[:, None, None]
    heads = tl.arange(0, BLOCK_H)[None, :, None]
    dims = tl.arange(0, BLOCK_D)[None, None, :]
    mask = token_mask[:, None, None] & (heads < NUM_HEADS) & (dims < HEAD_DIM)
    dst = slots[:, None, None] * (NUM_HEADS * HEAD_DIM) + heads * HEAD_DIM + dims
    k = tl.load(k_ptr + t3 * k_token_stride + heads * k_head_stride + dims, mask=mask)
    v = tl.load(v_ptr + t3 * v_token_stride + heads * v_head_stride + dims, mask=mask)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """k, v: [T, Hk, D] (views allowed); caches: [S + 1, Hk, D] contiguous; slots: [T] int."""
    assert k.dim() == 3 and k.shape == v.shape, (k.shape, v.shape)
    num_tokens, num_heads, head_dim = k.shape
    assert k_cache.shape == v_cache.shape and k_cache.shape[1:] == (num_heads, head_dim)
    assert k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k.stride(2) == 1 and v.stride(2) == 1, "last dim must be contiguous"
    assert slots.shape == (num_tokens,)
    check_float(k, v, k_cache, v_cache)
    check_index(slots)
    check_device(k, v, k_cache, v_cache, slots)
    if num_tokens == 0:
        return
    block_h = triton.next_power_of_2(num_heads)
    block_d = triton.next_power_of_2(head_dim)
    block_t = max(1, min(4096 // (block_h * block_d), 8, triton.next_power_of_2(num_tokens)))
    _store_kv_kernel[(triton.cdiv(num_tokens, block_t),)](
        k,
        v,
        k_cache,
        v_cache,
        slots,
        num_tokens,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=8 if block_t * block_h * block_d >= 4096 else (4 if block_h * block_d >= 1024 else 1),
    )
