"""Rotary embedding tables, numerically equal to transformers' ROPE_INIT_FUNCTIONS."""

from __future__ import annotations

import math

import torch

from llm_core.models.config import ModelConfig, RopeScaling
from llm_core.ops import torch_ops


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # [head_dim / 2] fp32
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    # Long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def inv_freq_and_scaling(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """-> (inv_freq [head_dim / 2] fp32, attention_scaling applied to cos and sin)."""
    inv_freq = default_inv_freq(cfg.head_dim, cfg.rope_theta)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq, 1.0
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor, 1.0
    return _llama3_inv_freq(inv_freq, scaling), 1.0


def build_cos_sin(cfg: ModelConfig, device: torch.device) -> torch.Tensor:
    # -> [max_position_embeddings, head_dim] fp32 (cos | sin), the table ops.apply_rotary reads.
    inv_freq, attention_scaling = inv_freq_and_scaling(cfg)
    return torch_ops.rotary_cos_sin(inv_freq.to(device), cfg.max_position_embeddings, attention_scaling)
