"""Random inputs shared by the kernel tests: a scattered token KV pool and comparison helpers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# Per-row relative error allowed against the fp32 torch reference.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def assert_rows_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Every element written and finite, and each row within the dtype's relative tolerance."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), "unwritten (poisoned) or non-finite output"
    o = out.float().reshape(-1, out.shape[-1])
    r = ref.float().reshape(-1, ref.shape[-1])
    err = (o - r).norm(dim=-1) / r.norm(dim=-1).clamp_min(1e-6)
    worst = int(err.argmax())
    assert err[worst] < TOLERANCE[dtype], f"row {worst}: relative error {err[worst]:.3g}"


def poisoned(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


@dataclass
class KVBatch:
    """B sequences whose tokens sit at random slots of a pool, in random request-table rows."""

    k_cache: torch.Tensor  # [S + 1, Hk, D]
    v_cache: torch.Tensor
    req_to_slot: torch.Tensor  # [R + 1, L] int32
    req_rows: torch.Tensor  # [B] int32
    prefix_lens: torch.Tensor  # [B] int32
    seq_lens: torch.Tensor  # [B] int32
    query_start_loc: torch.Tensor  # [B + 1] int32
    max_query_len: int
    max_seq_len: int


def make_kv_batch(
    prefix_lens: list[int],
    query_lens: list[int],
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    spare_slots: int = 97,
) -> KVBatch:
    seq_lens = [p + q for p, q in zip(prefix_lens, query_lens, strict=True)]
    num_slots = sum(seq_lens) + spare_slots
    max_reqs = 2 * len(seq_lens) + 3
    max_len = max(seq_lens) + 5
    shape = (num_slots + 1, kv_heads, head_dim)
    k_cache = torch.randn(shape, dtype=torch.float32, device=DEVICE).to(dtype)
    v_cache = torch.randn(shape, dtype=torch.float32, device=DEVICE).to(dtype)
    req_to_slot = torch.full((max_reqs + 1, max_len), num_slots, dtype=torch.int32, device=DEVICE)
    perm = torch.randperm(num_slots, device=DEVICE).to(torch.int32)
    rows = torch.randperm(max_reqs, device=DEVICE)[: len(seq_lens)].to(torch.int32)  # not contiguous
    used = 0
    for row, total in zip(rows.tolist(), seq_lens, strict=True):
        req_to_slot[row, :total] = perm[used : used + total]
        used += total
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)

    def ints(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int32, device=DEVICE)

    return KVBatch(
        k_cache=k_cache,
        v_cache=v_cache,
        req_to_slot=req_to_slot,
        req_rows=rows,
        prefix_lens=ints(prefix_lens),
        seq_lens=ints(seq_lens),
        query_start_loc=ints(starts),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
    )
