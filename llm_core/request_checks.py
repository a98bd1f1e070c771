"""Checks of a request before the engine queues it: every ValueError names the offending field."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llm_core.models.config import ModelConfig
from llm_core.sampling_params import SamplingParams


def check_request(
    model: ModelConfig, max_model_len: int, prompt_ids: list[int], params: SamplingParams, image_embeds
) -> np.ndarray | None:
    """-> the image embeddings as a contiguous fp32 [N, hidden] array (None without images)."""
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params: expected SamplingParams, got {type(params).__name__}")
    if not prompt_ids:
        raise ValueError("prompt is empty")
    vocab = model.vocab_size
    if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
        raise ValueError(f"prompt token ids must be in [0, {vocab})")
    bad_stops = [t for t in params.stop_token_ids if not 0 <= t < vocab]
    if bad_stops:
        raise ValueError(f"stop_token_ids must be in [0, {vocab}), got {bad_stops}")
    problem = context_problem(max_model_len, len(prompt_ids), params.max_tokens)
    if problem is not None:
        raise ValueError(f"{problem[0]}: {problem[1]}")
    return _check_image_embeds(model, prompt_ids, image_embeds)


def context_problem(max_model_len: int, num_prompt_tokens: int, max_tokens: int) -> tuple[str, str] | None:
    """(field, problem) when the prompt and max_tokens do not fit the model's context, else None.

    The one rule for the context: the engine applies it to every request (`check_request`); preprocess
    applies it too, to answer an ensemble request under its own field names before the vision tower runs.
    The router checks only what it alone knows (the KV pool's size)."""
    if num_prompt_tokens >= max_model_len:
        return "prompt", f"is {num_prompt_tokens} tokens long; the model's context is {max_model_len} tokens"
    room = max_model_len - num_prompt_tokens
    if max_tokens > room:
        return "max_tokens", (
            f"{max_tokens} exceeds the room left in the model's context "
            f"({max_model_len} - {num_prompt_tokens} prompt tokens = {room})"
        )
    return None


def _check_image_embeds(model: ModelConfig, prompt_ids: list[int], image_embeds) -> np.ndarray | None:
    image_token = model.image_token_index
    num_image_tokens = sum(1 for t in prompt_ids if t == image_token) if image_token is not None else 0
    if image_embeds is None:
        if num_image_tokens:
            raise ValueError(f"prompt has {num_image_tokens} image tokens but no image embeddings")
        return None
    embeds = image_embeds.detach().float().cpu().numpy() if isinstance(image_embeds, torch.Tensor) else image_embeds
    embeds = np.ascontiguousarray(embeds, dtype=np.float32)
    if embeds.ndim != 2 or embeds.shape[1] != model.hidden_size:
        raise ValueError(f"image_embeds must be [N, {model.hidden_size}], got {list(embeds.shape)}")
    if embeds.shape[0] != num_image_tokens:
        raise ValueError(f"image_embeds has {embeds.shape[0]} rows but the prompt has {num_image_tokens} image tokens")
    return embeds


def check_generate_args(
    prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams], image_embeds: Sequence | None
) -> tuple[list[SamplingParams], list]:
    """Engine.generate's arguments -> (one SamplingParams per prompt, one embeds entry per prompt)."""
    if isinstance(prompts, (str, bytes)) or not all(isinstance(p, Sequence) for p in prompts):
        raise ValueError("prompts: expected a list of token id lists")
    num = len(prompts)
    params_list = [params] * num if isinstance(params, SamplingParams) else list(params)
    if len(params_list) != num:
        raise ValueError(f"params: got {len(params_list)} SamplingParams for {num} prompts (give one, or one each)")
    embeds_list = list(image_embeds) if image_embeds is not None else [None] * num
    if len(embeds_list) != num:
        raise ValueError(f"image_embeds: got {len(embeds_list)} entries for {num} prompts (use None for none)")
    return params_list, embeds_list
