"""Plain-torch reference implementations of every hot operation.

This file is the contract: each Triton kernel in `llm_core/kernels/` has the same signature
and must match the function here. The engine runs these on CPU (and on GPU when the torch
path is forced), so they are written for clarity, not speed.

Layout conventions (token-granular KV cache, docs/ARCHITECTURE.md):
  k_cache, v_cache: [num_slots + 1, kv_heads, head_dim]  (the last slot is a padding dummy)
  req_to_slot:      [max_reqs + 1, max_len] int32, (request row, position) -> slot
"""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [T, H], weight: [H] -> [T, H]; computed in fp32 like transformers.
    xf = x.float()
    variance = xf.pow(2).mean(-1, keepdim=True)
    return weight * (xf * torch.rsqrt(variance + eps)).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # residual_out = x + residual; out = rms_norm(residual_out). Both [T, H].
    residual_out = x + residual
    return rms_norm(residual_out, weight, eps), residual_out


def rotary_cos_sin(inv_freq: torch.Tensor, max_positions: int, attention_scaling: float = 1.0) -> torch.Tensor:
    # -> [max_positions, head_dim] fp32: cos in the first half, sin in the second.
    positions = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(positions, inv_freq.float())  # [P, D/2]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1) * attention_scaling


def apply_rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """In place, rotate-half (NeoX / HF Llama) style.

    q: [T, Hq, D], k: [T, Hk, D], positions: [T] int, cos_sin: [P, D] fp32.
    """
    half = q.shape[-1] // 2
    cs = cos_sin[positions.long()]  # [T, D]
    cos = cs[:, None, :half]
    sin = cs[:, None, half:]
    for t in (q, k):
        x1 = t[..., :half].float()
        x2 = t[..., half:].float()
        out1 = x1 * cos - x2 * sin
        out2 = x2 * cos + x1 * sin
        t[..., :half] = out1.to(t.dtype)
        t[..., half:] = out2.to(t.dtype)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    # k, v: [T, Hk, D]; slots: [T] int -> k_cache[slots[i]] = k[i]
    idx = slots.long()
    k_cache[idx] = k.to(k_cache.dtype)
    v_cache[idx] = v.to(v_cache.dtype)


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
    # q rotated in place; k_cache[slots] = rotate(k), v_cache[slots] = v; k is not modified.
    k = k.clone()
    apply_rotary(q, k, positions, cos_sin)
    store_kv(k, v, k_cache, v_cache, slots)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, causal_offset: int | None):
    # q: [Lq, Hq, D], k/v: [Lk, Hk, D]; GQA by repeating kv heads.
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * sm_scale
    if causal_offset is not None:
        lq, lk = q.shape[0], k.shape[0]
        q_pos = torch.arange(lq, device=q.device)[:, None] + causal_offset
        k_pos = torch.arange(lk, device=q.device)[None, :]
        scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


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
    """Causal attention for packed variable-length queries.

    q: [T, Hq, D] packed new tokens of B sequences; query_start_loc: [B + 1] offsets into q.
    Sequence b has prefix_lens[b] earlier tokens already cached and seq_lens[b] tokens in
    total (new tokens' K/V are stored before this call). Keys are read through
    req_to_slot[req_rows[b], :seq_lens[b]]. Query i of sequence b sits at position
    prefix_lens[b] + i. Returns [T, Hq, D].
    """
    del max_query_len  # kernels use it for the launch grid
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for b, (row, prefix, total) in enumerate(
        zip(req_rows.tolist(), prefix_lens.tolist(), seq_lens.tolist(), strict=True)
    ):
        slots = req_to_slot[row, :total].long()
        qs = q[starts[b] : starts[b + 1]]
        out[starts[b] : starts[b + 1]] = _attend(qs, k_cache[slots], v_cache[slots], sm_scale, prefix)
    return out


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
    """One query token per sequence attending to all seq_lens[b] cached tokens.

    q: [B, Hq, D]; keys via req_to_slot[req_rows[b], :seq_lens[b]]. Returns [B, Hq, D].
    """
    del max_seq_len
    out = torch.empty_like(q)
    for b, (row, total) in enumerate(zip(req_rows.tolist(), seq_lens.tolist(), strict=True)):
        slots = req_to_slot[row, :total].long()
        out[b : b + 1] = _attend(q[b : b + 1], k_cache[slots], v_cache[slots], sm_scale, None)
    return out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [T, 2 * I] = [gate | up] -> silu(gate) * up: [T, I]
    half = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :half]) * x[..., half:]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # x: [T, K], weight: [N, K], bias: [N] -> [T, N]
    return torch.nn.functional.linear(x, weight, bias)


def linear_silu_and_mul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # weight: [2 I, K] = [gate | up] rows -> silu_and_mul(linear(x, weight, bias)): [T, I]
    return silu_and_mul(linear(x, weight, bias))


def inject_image_embeds(inputs_embeds: torch.Tensor, image_embeds: torch.Tensor, image_positions: torch.Tensor) -> None:
    # In place: inputs_embeds[image_positions[i]] = image_embeds[i].
    # inputs_embeds: [T, H]; image_embeds: [N, H]; image_positions: [N] int
    inputs_embeds[image_positions.long()] = image_embeds.to(inputs_embeds.dtype)
