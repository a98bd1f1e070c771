"""Tensor parallelism on CPU (gloo): tp=2 gives the same greedy tokens as tp=1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_core import Engine, EngineConfig, SamplingParams


@pytest.mark.parametrize(
    "arch,overrides",
    [("llama", {}), ("qwen2", {}), ("llama", {"num_key_value_heads": 1})],
    ids=["llama", "qwen2", "llama-kv-replicated"],
)
def test_tp2_matches_tp1(tiny_model_factory, arch, overrides):
    model_dir = str(tiny_model_factory(arch, **overrides))
    prompts = [[3, 4, 5, 6, 7], [9] * 13, [20, 21], list(range(30, 52))]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    outs, embeds = {}, {}
    for tp in (1, 2):
        with Engine(EngineConfig(model_dir=model_dir, tp=tp, dtype="float32")) as engine:
            outs[tp] = [o.token_ids for o in engine.generate(prompts, params)]
            embeds[tp] = engine.embed(prompts, pooling="mean")  # every rank all-reduces the pooled rows
            assert engine.stats()["slots_used"] == 0
    assert outs[1] == outs[2]
    np.testing.assert_allclose(embeds[1], embeds[2], rtol=1e-4, atol=1e-5)


def test_tp2_llava_matches_tp1(tiny_llava):
    from llm_core.models import VisionEncoder, preprocess_images
    from llm_core.testing.engine_checks import random_image

    model_dir = str(tiny_llava)
    vision = VisionEncoder.from_pretrained(model_dir, torch.device("cpu"), torch.float32)
    outs = {}
    for tp in (1, 2):
        with Engine(EngineConfig(model_dir=model_dir, tp=tp, dtype="float32")) as engine:
            cfg = engine.model_config
            ids = [5, 6] + [cfg.image_token_index] * cfg.num_image_tokens + [7, 8, 9]
            embeds = vision.encode(preprocess_images([random_image(3)], model_dir)).reshape(-1, cfg.hidden_size)
            params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
            outs[tp] = engine.generate([ids], params, image_embeds=[embeds])[0].token_ids
    assert outs[1] == outs[2]
