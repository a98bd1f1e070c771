"""Engine.embed on CPU: pooled final hidden states equal transformers' AutoModel last_hidden_state."""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch

from llm_core import Engine, EngineConfig, SamplingParams

LENGTHS = [3, 40, 1, 17, 9]


def _prompts(vocab_size: int, seed: int, lengths: list[int] = LENGTHS) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab_size) for _ in range(n)] for n in lengths]


@functools.cache
def hf_model(model_dir: str):
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_pooled(model_dir, prompts: list[list[int]], pooling: str, normalize: bool) -> np.ndarray:
    hf = hf_model(str(model_dir))
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            states = hf(torch.tensor([prompt])).last_hidden_state[0]  # [n, hidden], after the final norm
            vector = states[-1] if pooling == "last" else states.mean(0)
            rows.append(torch.nn.functional.normalize(vector, dim=-1) if normalize else vector)
    return torch.stack(rows).numpy()


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == np.float32
    cosine = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def chunked_engine(request, tiny_model_factory):
    # A 7-token prefill budget: the longer prompts are prefilled (and mean-pooled) over several chunks.
    model_dir = tiny_model_factory(request.param)
    config = EngineConfig(model_dir=str(model_dir), device="cpu", dtype="float32", max_prefill_tokens=7)
    with Engine(config) as engine:
        yield model_dir, engine


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_embed_matches_transformers(chunked_engine, pooling):
    model_dir, engine = chunked_engine
    prompts = _prompts(engine.model_config.vocab_size, seed=3)
    for normalize in (True, False):
        ours = engine.embed(prompts, pooling=pooling, normalize=normalize)
        _assert_close(ours, hf_pooled(model_dir, prompts, pooling, normalize))
    assert engine.stats()["slots_used"] == 0  # embedding requests hold no KV once done


def test_embed_beside_generation_and_with_a_cached_prefix(chunked_engine):
    # Embeddings while other requests decode (mixed steps), and last pooling after a prefix-cache hit.
    model_dir, engine = chunked_engine
    prompts = _prompts(engine.model_config.vocab_size, seed=5)
    shared = prompts[1][:30]
    engine.generate([shared + [5, 6]], SamplingParams(max_tokens=2, temperature=0.0))  # caches `shared`
    hits = engine.stats()["prefix_cache_hit_tokens_total"]
    prompts.append(shared + [7, 8, 9])
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts[:2]]
    ours = {mode: engine.embed(prompts, pooling=mode) for mode in ("last", "mean")}
    assert engine.stats()["prefix_cache_hit_tokens_total"] > hits
    for rid in ids:
        engine.abort(rid)
    for mode in ("last", "mean"):
        _assert_close(ours[mode], hf_pooled(model_dir, prompts, mode, True))


def test_embed_validates(chunked_engine):
    _, engine = chunked_engine
    with pytest.raises(ValueError, match="pooling"):
        engine.embed([[1, 2]], pooling="max")
    with pytest.raises(ValueError, match="at least one token"):
        engine.embed([[1, 2], []])
    with pytest.raises(ValueError):
        engine.embed([[1] * (engine.max_model_len + 1)])
    assert engine.embed([]).shape == (0, engine.model_config.hidden_size)
