"""Llama-family decoder (Llama 2/3, Mistral-style GQA, Qwen2 with qkv bias) over the token KV cache.

Module and parameter names mirror transformers' LlamaForCausalLM, with q/k/v fused into
`qkv_proj` and gate/up into `gate_up_proj` (see `STACKED_PARAMS`).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from llm_core.batch import ForwardBatch, KVCache
from llm_core.models.config import ModelConfig
from llm_core.models.layers import (
    MergedGateUpLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    TensorParallel,
    VocabParallelEmbedding,
    default_weight_loader,
)
from llm_core.models.rope import build_cos_sin

# (fused parameter, checkpoint name, shard id)
STACKED_PARAMS = (
    ("qkv_proj", "q_proj", "q"),
    ("qkv_proj", "k_proj", "k"),
    ("qkv_proj", "v_proj", "v"),
    ("gate_up_proj", "gate_proj", 0),
    ("gate_up_proj", "up_proj", 1),
)
_VISION_PREFIXES = (
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
)
# transformers 5 LLaVA names, then older LLaVA names -> Llama names.
_TEXT_RENAMES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)


class RMSNorm(nn.Module):
    """forward(..., reduce=True): x is a rank's partial sum of a row-parallel projection, all-reduced here
    together with the residual add and the norm (one kernel at decode sizes on GPUs)."""

    def __init__(self, hidden_size: int, eps: float, dtype: torch.dtype, device: torch.device, tp: TensorParallel):
        super().__init__()
        self.eps = eps
        self.tp = tp
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype, device=device), requires_grad=False)
        self.weight.weight_loader = default_weight_loader

    def forward(
        self, ops: ModuleType, x: torch.Tensor, residual: torch.Tensor | None, reduce: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x, residual: [T, hidden] -> (normed, new residual); without residual, x is the residual.
        # reduce: x is this rank's partial sum (RowParallelLinear(reduce=False)); sum over ranks first.
        if residual is None:
            assert not reduce
            return ops.rms_norm(x, self.weight, self.eps), x
        if reduce:
            return self.tp.all_reduce_add_rms_norm(ops, x, residual, self.weight, self.eps)
        return ops.add_rms_norm(x, residual, self.weight, self.eps)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, tp: TensorParallel, dtype, device):
        super().__init__()
        self.layer_id = layer_id
        self.head_dim = cfg.head_dim
        self.sm_scale = cfg.head_dim**-0.5
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.qkv_bias, tp, dtype, device
        )
        self.num_heads = self.qkv_proj.num_heads  # per rank
        self.num_kv_heads = self.qkv_proj.num_kv_heads  # per rank
        self.o_proj = RowParallelLinear(
            cfg.num_heads * cfg.head_dim, cfg.hidden_size, cfg.o_proj_bias, tp, dtype, device
        )
        # tp > 1: return the partial sum; the post-attention norm all-reduces it (fused).
        self.defer_reduce = tp.size > 1 and not cfg.o_proj_bias

    def project(
        self, hidden: torch.Tensor, positions: torch.Tensor, out_slots: torch.Tensor, kv: KVCache, ops: ModuleType,
        cos_sin: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """The queries [T, Hq, D] of `hidden` [T, hidden], rotated; the new tokens' rotated K and V stored to
        their slots `out_slots` [T] in this layer's cache."""
        num_tokens = hidden.shape[0]
        # Views into the packed projection (row stride (Hq + 2 Hk) * D): every op takes token and head
        # strides, so no copies (3 per layer and step at batch > 1 in benchmarks/raw/*_profile_decode.md).
        q, k, v = self.qkv_proj(hidden, ops).split(self.qkv_proj.output_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hk, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hk, D]
        k_cache, v_cache = kv.k[self.layer_id], kv.v[self.layer_id]
        # q rotated in place; the rotated k and v go straight into their cache slots (one kernel).
        ops.rotary_store_kv(q, k, v, positions, cos_sin, k_cache, v_cache, out_slots)
        return q

    def attend(self, q: torch.Tensor, batch: ForwardBatch, kv: KVCache, ops: ModuleType) -> torch.Tensor:
        """Attention of the queries q [T, Hq, D] over the cache through req_to_slot: [T, Hq * D]. T may exceed
        the batch's packed tokens (a CUDA-graph bucket's padding): those rows are left undefined."""
        num_tokens = q.shape[0]
        k_cache, v_cache = kv.k[self.layer_id], kv.v[self.layer_id]
        if batch.is_prefill and batch.num_decode:  # a mixed step: decode rows first, then prompt chunks
            out = self._mixed_attention(q, kv, batch, ops)
        elif batch.is_prefill:
            out = ops.prefill_attention(
                q, k_cache, v_cache, kv.req_to_slot, batch.req_rows, batch.prefix_lens, batch.seq_lens,
                batch.query_start_loc, batch.max_query_len, self.sm_scale,
            )  # fmt: skip
        else:
            assert num_tokens == batch.num_seqs, "decode takes exactly one new token per sequence"
            out = ops.decode_attention(
                q, k_cache, v_cache, kv.req_to_slot, batch.req_rows, batch.seq_lens,
                batch.max_seq_len, self.sm_scale,
            )  # fmt: skip
        return out.view(num_tokens, self.num_heads * self.head_dim)

    def output(self, attn: torch.Tensor, ops: ModuleType) -> torch.Tensor:
        """[T, hidden]: o_proj of the attention output, summed over ranks or this rank's partial sum with
        defer_reduce."""
        return self.o_proj(attn, reduce=not self.defer_reduce, ops=ops)

    def _mixed_attention(self, q: torch.Tensor, kv: KVCache, batch: ForwardBatch, ops: ModuleType) -> torch.Tensor:
        """q: [T, Hq, D], the first d tokens one decode row each: those through the decode kernel (split over
        the context), the prompt chunks after them through the prefill kernel. Returns [T, Hq, D]."""
        d = batch.num_decode
        k_cache, v_cache = kv.k[self.layer_id], kv.v[self.layer_id]
        decode = ops.decode_attention(
            q[:d], k_cache, v_cache, kv.req_to_slot, batch.req_rows[:d], batch.seq_lens[:d],
            batch.decode_max_seq_len, self.sm_scale,
        )  # fmt: skip
        prefill = ops.prefill_attention(
            q[d:], k_cache, v_cache, kv.req_to_slot, batch.req_rows[d:], batch.prefix_lens[d:], batch.seq_lens[d:],
            batch.prefill_query_start_loc, batch.max_query_len, self.sm_scale,
        )  # fmt: skip
        return torch.cat([decode, prefill])


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TensorParallel, dtype, device):
        super().__init__()
        self.gate_up_proj = MergedGateUpLinear(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, tp, dtype, device)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias, tp, dtype, device)
        self.defer_reduce = tp.size > 1 and not cfg.mlp_bias  # the next norm all-reduces (fused)

    def forward(self, x: torch.Tensor, ops: ModuleType) -> torch.Tensor:
        # [T, hidden]: summed over ranks, or this rank's partial sum with defer_reduce
        return self.down_proj(self.gate_up_proj.forward_silu_and_mul(x, ops), reduce=not self.defer_reduce, ops=ops)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, tp: TensorParallel, dtype, device):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_id, tp, dtype, device)
        self.mlp = LlamaMLP(cfg, tp, dtype, device)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device, tp)

    def forward(self, hidden, residual, batch, kv, ops, cos_sin) -> tuple[torch.Tensor, torch.Tensor]:
        q, residual = self.pre_attention(hidden, residual, batch.positions, batch.out_slots, kv, ops, cos_sin)
        return self.post_attention(self.self_attn.attend(q, batch, kv, ops), residual, ops)

    def pre_attention(
        self, hidden, residual, positions, out_slots, kv, ops, cos_sin
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries [T, Hq, D], residual [T, hidden]); stores the new tokens' K/V. hidden: the embeddings
        (residual None), else the previous MLP's output (a partial sum with defer_reduce)."""
        reduce = residual is not None and self.mlp.defer_reduce
        hidden, residual = self.input_layernorm(ops, hidden, residual, reduce=reduce)
        return self.self_attn.project(hidden, positions, out_slots, kv, ops, cos_sin), residual

    def post_attention(self, attn, residual, ops) -> tuple[torch.Tensor, torch.Tensor]:
        """(MLP output [T, hidden], a partial sum with defer_reduce; residual) from the attention output attn
        [T, Hq * D]."""
        hidden = self.self_attn.output(attn, ops)
        hidden, residual = self.post_attention_layernorm(ops, hidden, residual, reduce=self.self_attn.defer_reduce)
        return self.mlp(hidden, ops), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TensorParallel, dtype, device):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp, dtype, device)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i, tp, dtype, device) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device, tp)


class LlamaForCausalLM(nn.Module):
    """forward(batch, kv, ops) -> [B, vocab] fp32 logits of each sequence's last new token."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, tp, dtype, device)
        tied_to = self.model.embed_tokens if cfg.tie_word_embeddings else None
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size, tp, dtype, device, tied_to)
        self.num_kv_heads = self.model.layers[0].self_attn.num_kv_heads  # per rank, for the KV cache
        self.register_buffer("cos_sin", build_cos_sin(cfg, torch.device(device)), persistent=False)

    def embed(self, batch: ForwardBatch, ops: ModuleType) -> torch.Tensor:
        input_ids = batch.input_ids  # [T]
        if batch.image_embeds is None:
            return self.model.embed_tokens(input_ids)
        # Image placeholder ids may lie outside the vocabulary; their rows are overwritten anyway.
        input_ids = input_ids.clone()
        input_ids[batch.image_positions] = 0
        embeds = self.model.embed_tokens(input_ids)  # [T, hidden]
        ops.inject_image_embeds(embeds, batch.image_embeds, batch.image_positions)
        return embeds

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, kv: KVCache, ops: ModuleType) -> torch.Tensor:
        return self.forward_with_hidden(batch, kv, ops)[0]

    @torch.inference_mode()
    def forward_with_hidden(
        self, batch: ForwardBatch, kv: KVCache, ops: ModuleType
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, vocab] fp32 of each sequence's last new token, final normed hidden states [R, hidden]
        fp32 of the rows batch.hidden_indices or None without them: see `finish`)."""
        hidden = self.embed(batch, ops)  # [T, hidden]
        residual = None
        for layer in self.model.layers:
            hidden, residual = layer(hidden, residual, batch, kv, ops, self.cos_sin)
        return self.finish(hidden, residual, batch, ops)

    def finish(
        self, hidden: torch.Tensor, residual: torch.Tensor, batch: ForwardBatch, ops: ModuleType
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last layer's outputs [T, hidden] (hidden: a partial sum with defer_reduce) -> (logits [B, vocab]
        fp32 of the rows batch.logits_indices, final normed hidden states [R, hidden] fp32 of the rows
        batch.hidden_indices, the embedding requests' rows, normed in the same call; None without them)."""
        num_seqs = batch.logits_indices.shape[0]
        rows = batch.logits_indices
        if batch.hidden_indices is not None:
            rows = torch.cat([rows, batch.hidden_indices])  # [B + R]
        reduce = self.model.layers[-1].mlp.defer_reduce  # the all-reduce is row-wise: `rows` only
        normed, _ = self.model.norm(ops, hidden[rows], residual[rows], reduce=reduce)  # [B (+ R), hidden]
        logits = self.lm_head(normed[:num_seqs], ops).float()
        return logits, (normed[num_seqs:].float() if batch.hidden_indices is not None else None)

    def checkpoint_param(self, name: str) -> tuple[str, str | int | None] | None:
        """Checkpoint name -> (parameter, shard id); None for weights this model does not hold."""
        if name.startswith(_VISION_PREFIXES) or "rotary_emb.inv_freq" in name:
            return None
        for old, new in _TEXT_RENAMES:
            if name.startswith(old):
                name = new + name.removeprefix(old)
        if self.config.tie_word_embeddings and name == "lm_head.weight":
            return None
        for fused, part, shard_id in STACKED_PARAMS:
            if f".{part}." in name:
                return name.replace(f".{part}.", f".{fused}."), shard_id
        return name, None
