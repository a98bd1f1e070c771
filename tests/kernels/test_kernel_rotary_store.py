"""Rotary embedding (in place, on views of a packed qkv tensor) and KV store into scattered slots."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import DEVICE, ON_GPU, TOLERANCE

from llm_core import kernels
from llm_core.ops import torch_ops

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (tokens, q_heads, kv_heads, head_dim)
ROTARY_SHAPES = (
    [(1, 32, 8, 128), (1000, 32, 8, 128), (77, 16, 16, 64), (4096, 28, 4, 128)]
    if ON_GPU
    else [(1, 4, 4, 16), (11, 8, 2, 64), (6, 8, 1, 128)]
)
# (tokens, kv_heads, head_dim)
STORE_SHAPES = [(1, 8, 128), (3001, 8, 128), (513, 4, 64)] if ON_GPU else [(1, 2, 16), (19, 4, 64), (5, 1, 128)]


def _qkv_views(tokens: int, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
    # q/k/v as views of one [T, (Hq + 2 Hk) * D] projection output, like the model produces.
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, device=DEVICE).to(dtype)
    q, k, v = qkv.split([q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    return (
        q.view(tokens, q_heads, head_dim),
        k.view(tokens, kv_heads, head_dim),
        v.view(tokens, kv_heads, head_dim),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROTARY_SHAPES)
@pytest.mark.parametrize("pos_dtype", [torch.int64, torch.int32])
def test_apply_rotary(shape: tuple[int, int, int, int], dtype: torch.dtype, pos_dtype: torch.dtype) -> None:
    tokens, q_heads, kv_heads, head_dim = shape
    q, k, _ = _qkv_views(tokens, q_heads, kv_heads, head_dim, dtype)
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    max_positions = 9000 if ON_GPU else 300
    cos_sin = torch_ops.rotary_cos_sin(inv_freq, max_positions, attention_scaling=1.0)
    positions = torch.randint(0, max_positions, (tokens,), device=DEVICE).to(pos_dtype)
    q_ref, k_ref = q.clone(), k.clone()
    torch_ops.apply_rotary(q_ref, k_ref, positions, cos_sin)
    kernels.apply_rotary(q, k, positions, cos_sin)
    for out, ref in ((q, q_ref), (k, k_ref)):
        assert torch.isfinite(out).all()
        err = (out.float() - ref.float()).norm(dim=-1) / ref.float().norm(dim=-1)
        assert err.max() < TOLERANCE[dtype], float(err.max())


@pytest.mark.parametrize("cache_dtype", DTYPES)
@pytest.mark.parametrize("shape", STORE_SHAPES)
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_store_kv(shape: tuple[int, int, int], cache_dtype: torch.dtype, slot_dtype: torch.dtype) -> None:
    tokens, kv_heads, head_dim = shape
    _, k, v = _qkv_views(tokens, 2, kv_heads, head_dim, cache_dtype)
    num_slots = 3 * tokens + 50
    cache_shape = (num_slots + 1, kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, device=DEVICE).to(cache_dtype)
    v_cache = torch.randn(cache_shape, device=DEVICE).to(cache_dtype)
    slots = torch.randperm(num_slots, device=DEVICE)[:tokens].to(slot_dtype)  # scattered
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    torch_ops.store_kv(k, v, k_ref, v_ref, slots)
    k_cache[slots.long()] = float("nan")  # poison the slots the kernel must write
    v_cache[slots.long()] = float("nan")
    kernels.store_kv(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_store_kv_casts_to_cache_dtype() -> None:
    k = torch.randn(7, 2, 64, device=DEVICE)
    v = torch.randn(7, 2, 64, device=DEVICE)
    k_cache = torch.randn(20, 2, 64, device=DEVICE).to(torch.bfloat16)
    v_cache = torch.randn(20, 2, 64, device=DEVICE).to(torch.bfloat16)
    slots = torch.randperm(19, device=DEVICE)[:7]
    kernels.store_kv(k, v, k_cache, v_cache, slots)
    err = (k_cache[slots].float() - k).abs().max()
    assert err <= k.abs().max() * 2**-7, float(err)  # one bf16 rounding (truncation under the interpreter)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROTARY_SHAPES)
def test_rotary_store_kv(shape: tuple[int, int, int, int], dtype: torch.dtype) -> None:
    # The fused op = apply_rotary + store_kv: q rotated in place, rotated k and v in their slots, k untouched.
    tokens, q_heads, kv_heads, head_dim = shape
    q, k, v = _qkv_views(tokens, q_heads, kv_heads, head_dim, dtype)
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=DEVICE).float() / head_dim))
    max_positions = 9000 if ON_GPU else 300
    cos_sin = torch_ops.rotary_cos_sin(inv_freq, max_positions, attention_scaling=1.0)
    positions = torch.randint(0, max_positions, (tokens,), device=DEVICE).to(torch.int32)
    num_slots = 2 * tokens + 9
    cache_shape = (num_slots + 1, kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, device=DEVICE).to(dtype)
    v_cache = torch.randn(cache_shape, device=DEVICE).to(dtype)
    slots = torch.randperm(num_slots, device=DEVICE)[:tokens].to(torch.int32)
    q_ref, k_ref, v_ref = q.clone(), k_cache.clone(), v_cache.clone()
    k_before = k.clone()
    torch_ops.rotary_store_kv(q_ref, k, v, positions, cos_sin, k_ref, v_ref, slots)
    assert torch.equal(k, k_before), "the torch op must leave k as it was"
    k_cache[slots.long()] = float("nan")  # poison the slots the kernel must write
    v_cache[slots.long()] = float("nan")
    kernels.rotary_store_kv(q, k, v, positions, cos_sin, k_cache, v_cache, slots)
    assert torch.equal(k, k_before), "k modified"
    assert torch.equal(v_cache, v_ref), "v copied exactly"
    untouched = torch.ones(num_slots + 1, dtype=torch.bool, device=DEVICE)
    untouched[slots.long()] = False
    assert torch.equal(k_cache[untouched], k_ref[untouched]), "other slots written"
    for out, ref in ((q, q_ref), (k_cache[slots.long()], k_ref[slots.long()])):
        assert torch.isfinite(out).all()
        err = (out.float() - ref.float()).norm(dim=-1) / ref.float().norm(dim=-1)
        assert err.max() < TOLERANCE[dtype], float(err.max())
