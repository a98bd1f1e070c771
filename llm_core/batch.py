"""The inputs of one forward step (host-side StepInput, device-side ForwardBatch) and the token KV cache the
model reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(slots=True)
class SeqInput:
    """One sequence of a step, as plain data (it crosses process boundaries between ranks)."""

    row: int
    prefix_len: int
    new_token_ids: list[int]
    new_slots: list[int]
    num_prompt_tokens: int = 0
    image_embeds: np.ndarray | None = None  # [num_image_tokens_in_prompt, hidden]
    cached_slots: list[int] | None = None  # prefix-cache hit: slots of positions 0..prefix_len-1
    image_row_start: int = 0  # image tokens of the prompt before prefix_len (rows of image_embeds)
    pooling: str | None = None  # an embedding request's pooling mode ("last" | "mean"); None: generation


def pooled_offsets(seq: SeqInput) -> range:
    """Offsets within seq's new tokens whose final hidden states its embedding request needs: every token
    for mean pooling, the prompt's last token (in its last chunk) for last pooling, none for generation."""
    n = len(seq.new_token_ids)
    if seq.pooling == "mean":
        return range(n)
    if seq.pooling == "last" and seq.prefix_len + n == seq.num_prompt_tokens:
        return range(n - 1, n)
    return range(0)


@dataclass(slots=True)
class StepInput:
    is_prefill: bool  # the prefill forward (packed queries of any length): prefill and mixed steps
    seqs: list[SeqInput] = field(default_factory=list)
    num_decode: int = 0  # a mixed step: its first num_decode seqs are decode rows (one new token each)


@dataclass(frozen=True, slots=True)
class TokenFeed:
    """Input ids still on the device: the step's packed new tokens at `positions` take `token_ids`
    (sampled by the step before, not yet seen by the host). The host lists hold a placeholder there."""

    positions: torch.Tensor  # [M] int64, indices into the step's packed tokens
    token_ids: torch.Tensor  # [M] int64


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` on `device`: on CUDA a non-blocking copy from pinned memory, which does not wait for the
    work already queued on the device (a pageable copy would)."""
    host = torch.from_numpy(array)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


@dataclass(slots=True)
class KVCache:
    """Token-granular KV storage of one rank (docs/ARCHITECTURE.md).

    k[layer], v[layer]: [num_slots + 1, kv_heads_per_rank, head_dim]; slot `num_slots` is the
    padding dummy. req_to_slot: [max_reqs + 1, max_len] int32, (request row, position) -> slot;
    row `max_reqs` is the padding dummy.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    req_to_slot: torch.Tensor

    @property
    def num_slots(self) -> int:
        return self.k[0].shape[0] - 1

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        num_slots: int,
        kv_heads: int,
        head_dim: int,
        max_reqs: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        shape = (num_slots + 1, kv_heads, head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # Unused table entries point at the dummy slot so stray reads stay in bounds.
        req_to_slot = torch.full((max_reqs + 1, max_len), num_slots, dtype=torch.int32, device=device)
        return cls(k=k, v=v, req_to_slot=req_to_slot)

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


@dataclass(slots=True)
class ForwardBatch:
    """Inputs of one prefill or decode step for B sequences and T new tokens.

    The runner has already written req_to_slot[req_rows[b], prefix_lens[b]:seq_lens[b]] =
    the slots of sequence b's new tokens (`out_slots`, in packed order) before forward().
    Each layer stores its new K/V at `out_slots`, then attends through req_to_slot.
    """

    is_prefill: bool
    input_ids: torch.Tensor  # [T] int64, packed new tokens
    positions: torch.Tensor  # [T] int64, absolute position of each new token
    out_slots: torch.Tensor  # [T] int32, KV slot each new token is stored to
    req_rows: torch.Tensor  # [B] int32, rows of req_to_slot
    prefix_lens: torch.Tensor  # [B] int32, tokens already cached before this step
    seq_lens: torch.Tensor  # [B] int32, prefix + new tokens
    query_start_loc: torch.Tensor  # [B + 1] int32, offsets of each sequence's new tokens
    logits_indices: torch.Tensor  # [B] int64, index in T of each sequence's last new token
    max_query_len: int
    max_seq_len: int
    image_embeds: torch.Tensor | None = None  # [N, hidden] rows replacing image tokens
    image_positions: torch.Tensor | None = None  # [N] int64, indices in T of image tokens
    # Mixed steps: the first num_decode sequences are decode rows (one token each); their attention runs
    # the decode kernel, with this bound for its split grid (a context bucket, as in the decode graphs).
    num_decode: int = 0
    decode_max_seq_len: int = 0
    prefill_query_start_loc: torch.Tensor | None = None  # [B - num_decode + 1] int32: query_start_loc[d:] - d
    # Embedding requests in the step: indices in T whose final normed hidden states the step returns beside
    # the logits (ModelRunner.forward_with_hidden); None for generation-only steps (no extra work).
    hidden_indices: torch.Tensor | None = None  # [R] int64

    @property
    def num_seqs(self) -> int:
        return self.req_rows.shape[0]
