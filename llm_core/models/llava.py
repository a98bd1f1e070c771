"""LLaVA vision side: CLIP tower + 2-layer projector, producing the rows that replace image tokens.

The language model of a LLaVA checkpoint is the plain `LlamaForCausalLM` (see `build_model`);
the engine encodes images here and passes the result as `ForwardBatch.image_embeds`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from llm_core.models.clip import CLIPVisionTower, activation
from llm_core.models.config import ModelConfig, load_model_config

_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")
_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")


class LlavaProjector(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        vision_hidden = cfg.vision.hidden_size * len(cfg.vision_feature_layers)
        self.linear_1 = nn.Linear(vision_hidden, cfg.hidden_size, bias=cfg.projector_bias)
        self.act = activation(cfg.projector_hidden_act)
        self.linear_2 = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.projector_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class VisionEncoder(nn.Module):
    """pixel_values [N, 3, H, W] -> image embeddings [N, num_image_tokens, text hidden]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vision is None:
            raise ValueError(f"{cfg.arch} has no vision tower")
        self.config = cfg
        self.vision_tower = CLIPVisionTower(cfg.vision, cfg.vision_feature_layers)
        self.multi_modal_projector = LlavaProjector(cfg)

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: torch.device | str,
        dtype: torch.dtype,
        load_format: str = "safetensors",
    ) -> VisionEncoder:
        from llm_core.models.loader import load_weights

        with torch.device("meta"):
            encoder = cls(load_model_config(model_dir))
        encoder = encoder.to_empty(device=device).to(dtype).eval()
        load_weights(encoder, model_dir, load_format)
        return encoder

    @torch.inference_mode()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        param = self.multi_modal_projector.linear_1.weight
        states = self.vision_tower(pixel_values.to(param.device, param.dtype))  # per layer [N, 1 + P, Hv]
        if self.config.vision_feature_select_strategy == "default":
            states = [s[:, 1:] for s in states]  # drop CLS
        return self.multi_modal_projector(torch.cat(states, dim=-1))  # [N, tokens, hidden]

    def checkpoint_param(self, name: str) -> tuple[str, None] | None:
        """Checkpoint name -> (parameter, None); None for text weights and unused vision weights."""
        for prefix in _TOWER_PREFIXES:
            if name.startswith(prefix):
                name = "vision_tower." + name.removeprefix(prefix).removeprefix("vision_model.")
                return (name, None) if name in self._param_names else None
        for prefix in _PROJECTOR_PREFIXES:
            if name.startswith(prefix):
                return "multi_modal_projector." + name.removeprefix(prefix), None
        return None

    @cached_property
    def _param_names(self) -> set[str]:
        return {name for name, _ in self.named_parameters()}
