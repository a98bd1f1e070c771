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
    k_token_stride,
    k_head_stride,
    v_token_stride,
    v_head_stride,
    num_heads,
    head_dim,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + token).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < num_heads) & (dims < head_dim)
    dst = slot * num_heads * head_dim + heads * head_dim + dims
    k = tl.load(k_ptr + token * k_token_stride + heads * k_head_stride + dims, mask=mask)
    v = tl.load(v_ptr + token * v_token_stride + heads * v_head_stride + dims, mask=mask)
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
    _store_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slots,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        num_heads,
        head_dim,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=4 if block_h * block_d >= 1024 else 1,
    )
