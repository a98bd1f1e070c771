"""Decode attention (one query per sequence) over the token KV pool: split-K flash decoding.

Stage 1: program (seq, kv_head, split) attends the GROUP query heads that share kv_head to the
keys [split * split_len, (split + 1) * split_len) of its sequence, so each K/V row is read once
per kv head. It writes the normalized partial output and its log-sum-exp (log2 units).
Stage 2: program (seq, q_head) merges the partials of the splits that hold any keys.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_core.kernels._attention_block import attend_block
from llm_core.kernels._checks import (
    check_attention_inputs,
    check_device,
    check_float,
    check_index,
    dot_upcast,
    pdl_enabled,
    pdl_prologue,
)

_LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    q_ptr,  # [B, Hq, D]
    k_cache_ptr,  # [S + 1, Hk, D]
    v_cache_ptr,
    req_to_slot_ptr,  # [R + 1, L] int32
    req_rows_ptr,  # [B]
    seq_lens_ptr,  # [B]
    mid_out_ptr,  # [B, Hq, num_splits, D] fp32 contiguous; with DIRECT: the output [B, Hq, D]
    mid_lse_ptr,  # [B, Hq, num_splits] fp32 contiguous; unused with DIRECT
    stride_q_seq,
    stride_q_head,
    stride_kv_slot,
    stride_kv_head,
    stride_req_row,
    qk_scale,
    split_len,  # a multiple of BLOCK_N
    num_splits,
    HEAD_DIM: tl.constexpr,
    GROUP: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr,
    EVEN_D: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    DIRECT: tl.constexpr,  # one split: write the final output, no reduce
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * split_len
    if start >= seq_len:
        return  # the reduce reads only splits below cdiv(seq_len, split_len)
    end = tl.minimum(seq_len, start + split_len)
    row = tl.load(req_rows_ptr + seq).to(tl.int64)

    groups = tl.arange(0, BLOCK_G)
    heads = kv_head * GROUP + groups
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HEAD_DIM
    q_mask = (groups < GROUP)[:, None] & dim_mask[None, :]
    q_offs = seq.to(tl.int64) * stride_q_seq + heads[:, None] * stride_q_head + dims[None, :]
    q = tl.load(q_ptr + q_offs, mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    slot_row_ptr = req_to_slot_ptr + row * stride_req_row
    k_head_ptr = k_cache_ptr + kv_head * stride_kv_head
    v_head_ptr = v_cache_ptr + kv_head * stride_kv_head
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    full_end = start + ((end - start) // BLOCK_N) * BLOCK_N
    for start_n in range(start, full_end, BLOCK_N):
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, 0, start_n, end, slot_row_ptr, k_head_ptr, v_head_ptr, stride_kv_slot,
            dims, dim_mask, qk_scale, False, False, EVEN_D, UPCAST, IEEE, BLOCK_N,
        )  # fmt: skip
    if full_end < end:
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, 0, full_end, end, slot_row_ptr, k_head_ptr, v_head_ptr, stride_kv_slot,
            dims, dim_mask, qk_scale, True, False, EVEN_D, UPCAST, IEEE, BLOCK_N,
        )  # fmt: skip

    mid = (seq * NUM_Q_HEADS + heads).to(tl.int64) * num_splits + split  # [BLOCK_G]
    out = acc / l_i[:, None]
    if DIRECT:
        tl.store(mid_out_ptr + mid[:, None] * HEAD_DIM + dims[None, :], out.to(q_ptr.dtype.element_ty), mask=q_mask)
    else:
        tl.store(mid_out_ptr + mid[:, None] * HEAD_DIM + dims[None, :], out, mask=q_mask)
        tl.store(mid_lse_ptr + mid, m_i + tl.math.log2(l_i), mask=groups < GROUP)


@triton.jit
def _decode_reduce_kernel(
    mid_out_ptr,  # [B, Hq, num_splits, D] fp32
    mid_lse_ptr,  # [B, Hq, num_splits] fp32
    seq_lens_ptr,  # [B]
    out_ptr,  # [B, Hq, D] contiguous
    split_len,
    num_splits,
    HEAD_DIM: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL_TRIGGER: tl.constexpr,  # let a PDL-launched GEMV after this kernel be scheduled now (_checks)
):
    pdl_prologue(False, PDL_TRIGGER)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    num_valid = tl.cdiv(seq_len, split_len)
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, BLOCK_D)
    split_mask = splits < num_valid
    base = (seq * NUM_Q_HEADS + head).to(tl.int64) * num_splits
    lse = tl.load(mid_lse_ptr + base + splits, mask=split_mask, other=float("-inf"))  # [BLOCK_S]
    weights = tl.math.exp2(lse - tl.max(lse, axis=0))
    weights = weights / tl.sum(weights, axis=0)
    mask = split_mask[:, None] & (dims < HEAD_DIM)[None, :]
    parts = tl.load(mid_out_ptr + (base + splits)[:, None] * HEAD_DIM + dims[None, :], mask=mask, other=0.0)
    out = tl.sum(parts * weights[:, None], axis=0)  # [BLOCK_D]
    out_offs = (seq * NUM_Q_HEADS + head).to(tl.int64) * HEAD_DIM + dims
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    """Launch shape; the defaults measured best overall on an H200 (benchmarks/kernel_bench.py --sweep)."""

    block_n: int = 64
    num_warps: int = 2
    num_stages: int = 4
    max_splits: int = 64
    # One key block per split at the least: where batch x kv heads leaves SMs idle (batch 1, short context),
    # latency falls with every extra split down to one block (H200, 512 keys: 2 splits 15.5 us, 8 splits
    # 10.5 us; benchmarks/raw/2026-11-22_h200x2_small_grid.log). Long contexts and large batches are
    # bounded by programs_per_sm first and keep their split count.
    min_split_len: int = 64
    programs_per_sm: int = 4  # split until batch * kv_heads * splits fills this many per SM


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter: keep grids small
    return torch.cuda.get_device_properties(device).multi_processor_count


def num_splits_for(batch: int, kv_heads: int, max_seq_len: int, num_sms: int, config: DecodeConfig) -> int:
    """Splits per sequence so that the grid fills the GPU without splits shorter than min_split_len.

    Rounded down: at most programs_per_sm * num_sms programs (one wave), no partial second wave.
    """
    wanted = (config.programs_per_sm * num_sms) // max(batch * kv_heads, 1)
    by_length = max(max_seq_len // config.min_split_len, 1)
    return max(1, min(wanted, by_length, config.max_splits))


def decode_attention_with_splits(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    sm_scale: float,
    num_splits: int,
    config: DecodeConfig,
) -> torch.Tensor:
    # q: [B, Hq, D]; caches: [S + 1, Hk, D]; req_to_slot: [R + 1, L] int32; req_rows, seq_lens: [B]
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = check_attention_inputs(q, k_cache, v_cache, req_to_slot)
    assert req_rows.shape == seq_lens.shape == (batch,) and batch <= 65535
    check_float(q)
    check_index(req_rows, seq_lens)
    check_device(q, k_cache, v_cache, req_to_slot, req_rows, seq_lens)
    out = torch.empty((batch, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0 or max_seq_len == 0:
        return out
    block_n = config.block_n
    split_len = triton.cdiv(triton.cdiv(max_seq_len, num_splits), block_n) * block_n
    num_splits = triton.cdiv(max_seq_len, split_len)
    direct = num_splits == 1
    if direct:
        mid_out, mid_lse = out, out
    else:
        mid_out = torch.empty((batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    group = num_q_heads // num_kv_heads
    block_d = max(triton.next_power_of_2(head_dim), 16)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        req_to_slot,
        req_rows,
        seq_lens,
        mid_out,
        mid_lse,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        req_to_slot.stride(0),
        sm_scale * _LOG2E,
        split_len,
        num_splits,
        HEAD_DIM=head_dim,
        GROUP=group,
        NUM_Q_HEADS=num_q_heads,
        EVEN_D=block_d == head_dim,
        UPCAST=dot_upcast(),
        IEEE=q.dtype == torch.float32,
        DIRECT=direct,
        BLOCK_G=max(triton.next_power_of_2(group), 16),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if direct:
        return out
    _decode_reduce_kernel[(batch, num_q_heads)](
        mid_out,
        mid_lse,
        seq_lens,
        out,
        split_len,
        num_splits,
        HEAD_DIM=head_dim,
        NUM_Q_HEADS=num_q_heads,
        BLOCK_S=max(triton.next_power_of_2(num_splits), 2),
        BLOCK_D=block_d,
        PDL_TRIGGER=pdl_enabled(q.device),
        num_warps=4 if num_splits * block_d >= 2048 else 1,
    )
    return out


DEFAULT_CONFIG = DecodeConfig()


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seq_len: int,
    sm_scale: float,
) -> torch.Tensor:
    """One query per sequence over seq_lens[b] cached tokens (see torch_ops.decode_attention)."""
    num_splits = num_splits_for(q.shape[0], k_cache.shape[1], max_seq_len, _num_sms(q.device), DEFAULT_CONFIG)
    return decode_attention_with_splits(
        q, k_cache, v_cache, req_to_slot, req_rows, seq_lens, max_seq_len, sm_scale, num_splits,
        DEFAULT_CONFIG,
    )  # fmt: skip
