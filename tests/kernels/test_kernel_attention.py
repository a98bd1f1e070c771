"""Prefill and decode attention vs torch_ops: ragged batches, GQA 1/4/8, scattered slots, splits."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import DEVICE, ON_GPU, KVBatch, assert_rows_close, make_kv_batch

from llm_core import kernels
from llm_core.kernels.decode_attention import DecodeConfig, decode_attention_with_splits
from llm_core.kernels.prefill_attention import PrefillConfig, prefill_attention_with_config
from llm_core.ops import torch_ops

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (q_heads, kv_heads): GQA ratios 1, 4, 8
HEADS = [(32, 32), (32, 8), (32, 4)] if ON_GPU else [(4, 4), (8, 2), (8, 1)]
HEAD_DIMS = [64, 128] if ON_GPU else [16, 64, 128]
# (prefix_lens, query_lens): ragged; a single token; prefixes (resumed requests) that are not block aligned
PREFILL_BATCHES = (
    [([0, 0, 0], [1, 2048, 777]), ([0, 1000, 64, 3], [4096, 129, 1, 700])]
    if ON_GPU
    else [([0, 0, 0], [1, 131, 40]), ([0, 70, 5], [3, 66, 129])]
)
DECODE_SEQ_LENS = [[1, 4097, 700, 32768, 2048, 129]] if ON_GPU else [[1, 300, 64, 129, 17]]


def _queries(num_tokens: int, q_heads: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    # A head-strided view (as split from a packed qkv projection), not a contiguous tensor.
    wide = torch.randn(num_tokens, q_heads + 3, head_dim, device=DEVICE).to(dtype)
    return wide[:, 1 : 1 + q_heads]


def _prefill_ref(q: torch.Tensor, kv: KVBatch, sm_scale: float) -> torch.Tensor:
    return torch_ops.prefill_attention(
        q, kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.prefix_lens, kv.seq_lens,
        kv.query_start_loc, kv.max_query_len, sm_scale,
    )  # fmt: skip


def _decode_ref(q: torch.Tensor, kv: KVBatch, sm_scale: float) -> torch.Tensor:
    return torch_ops.decode_attention(
        q, kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.seq_lens, kv.max_seq_len, sm_scale
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("batch", PREFILL_BATCHES)
def test_prefill_attention(batch, heads, head_dim: int, dtype: torch.dtype) -> None:
    prefix_lens, query_lens = batch
    q_heads, kv_heads = heads
    kv = make_kv_batch(prefix_lens, query_lens, kv_heads, head_dim, dtype)
    q = _queries(sum(query_lens), q_heads, head_dim, dtype)
    sm_scale = head_dim**-0.5
    out = kernels.prefill_attention(
        q, kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.prefix_lens, kv.seq_lens,
        kv.query_start_loc, kv.max_query_len, sm_scale,
    )  # fmt: skip
    assert_rows_close(out, _prefill_ref(q, kv, sm_scale), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", [PrefillConfig(16, 16, 2, 1), PrefillConfig(32, 16, 4, 2)])
def test_prefill_attention_small_blocks(config: PrefillConfig, dtype: torch.dtype) -> None:
    # Many query and key blocks at small sizes: every diagonal/full-block case and ragged tails.
    prefix_lens, query_lens = [0, 17, 33, 0], [47, 16, 1, 100]
    kv = make_kv_batch(prefix_lens, query_lens, 2, 64, dtype)
    q = _queries(sum(query_lens), 4, 64, dtype)
    out = prefill_attention_with_config(
        q, kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.prefix_lens, kv.seq_lens,
        kv.query_start_loc, kv.max_query_len, 0.125, config,
    )  # fmt: skip
    assert_rows_close(out, _prefill_ref(q, kv, 0.125), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("seq_lens", DECODE_SEQ_LENS)
def test_decode_attention(seq_lens: list[int], heads, head_dim: int, dtype: torch.dtype) -> None:
    q_heads, kv_heads = heads
    kv = make_kv_batch([n - 1 for n in seq_lens], [1] * len(seq_lens), kv_heads, head_dim, dtype)
    q = _queries(len(seq_lens), q_heads, head_dim, dtype)
    sm_scale = head_dim**-0.5
    out = kernels.decode_attention(
        q, kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.seq_lens, kv.max_seq_len, sm_scale
    )
    assert_rows_close(out, _decode_ref(q, kv, sm_scale), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 64])
def test_decode_attention_splits(num_splits: int, dtype: torch.dtype) -> None:
    # Context lengths just below, at and above split boundaries (split_len is a multiple of 16 here).
    seq_lens = [16, 17, 95, 96, 97, 1, 250] if not ON_GPU else [1, 511, 512, 513, 8191, 8192, 30001]
    config = DecodeConfig(block_n=16, num_warps=2, num_stages=1) if not ON_GPU else DecodeConfig()
    kv = make_kv_batch([n - 1 for n in seq_lens], [1] * len(seq_lens), 2, 64, dtype)
    q = _queries(len(seq_lens), 8, 64, dtype)
    out = decode_attention_with_splits(
        q, kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.seq_lens, kv.max_seq_len, 0.125,
        num_splits, config,
    )  # fmt: skip
    assert_rows_close(out, _decode_ref(q, kv, 0.125), dtype)


def test_decode_matches_last_prefill_row() -> None:
    # The same sequence seen by both kernels: decode of the last token == last row of prefill.
    dtype = torch.float16
    kv = make_kv_batch([0], [200], 2, 64, dtype)
    q = _queries(200, 8, 64, dtype)
    prefill = kernels.prefill_attention(
        q, kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.prefix_lens, kv.seq_lens,
        kv.query_start_loc, kv.max_query_len, 0.125,
    )  # fmt: skip
    decode = kernels.decode_attention(
        q[-1:], kv.k_cache, kv.v_cache, kv.req_to_slot, kv.req_rows, kv.seq_lens, kv.max_seq_len, 0.125
    )
    assert_rows_close(decode, prefill[-1:].float(), dtype)
