"""Causal attention over packed variable-length prefill queries, K/V read through req_to_slot.

One program computes BLOCK_M queries of one sequence and one query head with an online softmax
in fp32 (exp2 domain). Keys come from the token KV pool through the request table, so earlier
context (prefix_lens > 0: a resumed or prefix-cached request) is attended like new tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from llm_core.kernels._attention_block import attend_block
from llm_core.kernels._checks import check_attention_inputs, check_device, check_float, check_index, dot_upcast

_LOG2E = 1.4426950408889634


# The index pointers are slices at any offset (a mixed step passes rows [num_decode:]) and num_m_blocks any
# count: neither specialised, so one compiled variant serves every step (each of them is read once per program).
@triton.jit(
    do_not_specialize=["num_m_blocks"],
    do_not_specialize_on_alignment=["req_rows_ptr", "prefix_lens_ptr", "seq_lens_ptr", "query_start_loc_ptr"],
)
def _prefill_attention_kernel(
    q_ptr,  # [T, Hq, D]
    k_cache_ptr,  # [S + 1, Hk, D]
    v_cache_ptr,
    out_ptr,  # [T, Hq, D] contiguous
    req_to_slot_ptr,  # [R + 1, L] int32
    req_rows_ptr,  # [B]
    prefix_lens_ptr,  # [B]
    seq_lens_ptr,  # [B]
    query_start_loc_ptr,  # [B + 1]
    stride_q_tok,
    stride_q_head,
    stride_kv_slot,
    stride_kv_head,
    stride_req_row,
    qk_scale,
    head_dim,
    num_m_blocks,
    GROUP: tl.constexpr,  # q heads per kv head
    NUM_Q_HEADS: tl.constexpr,
    EVEN_D: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Heaviest (last, most keys under the causal mask) query blocks first.
    m_block = num_m_blocks - 1 - tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    start_m = m_block * BLOCK_M
    if start_m >= q_len:
        return
    prefix = tl.load(prefix_lens_ptr + seq)
    seq_len = tl.load(seq_lens_ptr + seq)
    row = tl.load(req_rows_ptr + seq).to(tl.int64)
    kv_head = head // GROUP

    offs_m = start_m + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    q_mask = (offs_m < q_len)[:, None] & dim_mask[None, :]
    tok = (q_start + offs_m).to(tl.int64)
    q_offs = tok[:, None] * stride_q_tok + head * stride_q_head + dims[None, :]
    q = tl.load(q_ptr + q_offs, mask=q_mask, other=0.0)  # [BLOCK_M, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    q_pos = prefix + offs_m

    slot_row_ptr = req_to_slot_ptr + row * stride_req_row
    k_head_ptr = k_cache_ptr + kv_head * stride_kv_head
    v_head_ptr = v_cache_ptr + kv_head * stride_kv_head
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Keys before the block's first query position are visible to every query: no mask.
    full_end = ((prefix + start_m) // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, q_pos, start_n, seq_len, slot_row_ptr, k_head_ptr, v_head_ptr,
            stride_kv_slot, dims, dim_mask, qk_scale, False, True, EVEN_D, UPCAST, IEEE, BLOCK_N,
        )  # fmt: skip
    end = tl.minimum(seq_len, prefix + start_m + BLOCK_M)
    for start_n in range(full_end, end, BLOCK_N):
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, q_pos, start_n, seq_len, slot_row_ptr, k_head_ptr, v_head_ptr,
            stride_kv_slot, dims, dim_mask, qk_scale, True, True, EVEN_D, UPCAST, IEEE, BLOCK_N,
        )  # fmt: skip

    out = acc / l_i[:, None]
    out_offs = tok[:, None] * (NUM_Q_HEADS * head_dim) + head * head_dim + dims[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


@dataclass(frozen=True, slots=True)
class PrefillConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_config(head_dim: int, dtype: torch.dtype) -> PrefillConfig:
    """Launch shape measured best on an H200 (benchmarks/kernel_bench.py --sweep, 1x8192 causal bf16)."""
    if dtype == torch.float32:
        return PrefillConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
    return PrefillConfig(block_m=128, block_n=64, num_warps=4, num_stages=3)


def prefill_attention_with_config(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    sm_scale: float,
    config: PrefillConfig,
) -> torch.Tensor:
    # q: [T, Hq, D]; caches: [S + 1, Hk, D]; req_to_slot: [R + 1, L] int32; [B] / [B + 1] int
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = check_attention_inputs(q, k_cache, v_cache, req_to_slot)
    num_seqs = req_rows.shape[0]
    assert prefix_lens.shape == seq_lens.shape == (num_seqs,) and query_start_loc.shape == (num_seqs + 1,)
    assert num_seqs <= 65535
    check_float(q)
    check_index(req_rows, prefix_lens, seq_lens, query_start_loc)
    check_device(q, k_cache, v_cache, req_to_slot, req_rows, prefix_lens, seq_lens, query_start_loc)
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0 or num_seqs == 0 or max_query_len == 0:
        return out
    num_m_blocks = triton.cdiv(max_query_len, config.block_m)
    _prefill_attention_kernel[(num_m_blocks, num_q_heads, num_seqs)](
        q,
        k_cache,
        v_cache,
        out,
        req_to_slot,
        req_rows,
        prefix_lens,
        seq_lens,
        query_start_loc,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        req_to_slot.stride(0),
        sm_scale * _LOG2E,
        head_dim,
        num_m_blocks,
        GROUP=num_q_heads // num_kv_heads,
        NUM_Q_HEADS=num_q_heads,
        EVEN_D=triton.next_power_of_2(head_dim) == head_dim and head_dim >= 16,
        UPCAST=dot_upcast(),
        IEEE=q.dtype == torch.float32,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_D=max(triton.next_power_of_2(head_dim), 16),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_slot: torch.Tensor,
    req_rows: torch.Tensor,
    prefix_lens: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    max_query_len: int,
    sm_scale: float,
) -> torch.Tensor:
    """Causal attention for packed variable-length queries (see torch_ops.prefill_attention)."""
    return prefill_attention_with_config(
        q, k_cache, v_cache, req_to_slot, req_rows, prefix_lens, seq_lens, query_start_loc,
        max_query_len, sm_scale, default_config(q.shape[2], q.dtype),
    )  # fmt: skip
