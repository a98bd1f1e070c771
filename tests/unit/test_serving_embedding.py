"""llm_core.serving.embedding without an engine process: settings and the per-request split."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from llm_core.pooling_params import PoolingParams
from llm_core.serving.embedding import EmbeddingService, decode_texts, load_embedding_settings


class FakeEngine:
    """Tokens are the characters' codes; the 'embedding' of a prompt is [len, first id]."""

    model_config = SimpleNamespace(hidden_size=2)
    max_model_len = 8

    def __init__(self) -> None:
        self.calls: list[list[list[int]]] = []
        self.tokenizer = lambda text: {"input_ids": [ord(c) for c in text]}

    def embed(self, prompts, pooling, normalize):
        self.calls.append(prompts)
        return np.array([[len(p), p[0]] for p in prompts], np.float32)


def test_settings_from_parameters_and_environment():
    settings = load_embedding_settings({"pooling": "mean", "enabled": "${x}"}, env={"LLM_EMBED_NORMALIZE": "0"})
    assert settings.enabled is False and settings.pooling == PoolingParams("mean", False)
    assert load_embedding_settings({}, env={"LLM_EMBEDDING": "1"}).pooling == PoolingParams("last", True)
    with pytest.raises(ValueError, match="pooling"):
        load_embedding_settings({"pooling": "max"}, env={})
    with pytest.raises(ValueError, match="LLM_EMBEDDING"):
        load_embedding_settings({}, env={"LLM_EMBEDDING": "maybe"})


def test_one_engine_call_per_batch_split_back_per_request():
    engine = FakeEngine()
    service = EmbeddingService(engine, PoolingParams())
    batch = [
        {"text_input": np.array([[b"ab"]], np.object_)},
        {"text_input": np.array([[b"c"], ["def"]], np.object_)},
        {"text_input": np.array([[b""]], np.object_)},
        {"text_input": np.array([[b"x" * 8]], np.object_)},
        {},
    ]
    ok1, ok2, empty, long, missing = service.run(batch)
    assert engine.calls == [[[97, 98], [99], [100, 101, 102]]]
    assert ok1.tolist() == [[2, 97]] and ok2.tolist() == [[1, 99], [3, 100]]
    assert "at least one token" in empty and "exceed the limit of 7" in long and "missing" in missing
    assert decode_texts(np.array([b"a", "b"], np.object_)) == ["a", "b"]
