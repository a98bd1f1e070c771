"""pb_utils-free logic of the `embedding` Triton model: texts in, pooled final hidden states out.

The model starts its own Engine over the same model directory and engine settings as `llm` (one engine per
Python stub), but only when enabled (`LLM_EMBEDDING=1` or the `enabled` parameter): otherwise it loads
inert and answers every request with an error that says how to enable it, so a chat server (or a plain
`tritonserver --model-repository=model_repository`) never starts a second engine and KV pool by accident.

| parameter key | environment         | meaning                                            |
|---------------|---------------------|----------------------------------------------------|
| enabled       | LLM_EMBEDDING       | 1: start the engine and serve embeddings           |
| pooling       | LLM_EMBED_POOLING   | last (default; gte-Qwen2, e5-mistral) or mean      |
| normalize     | LLM_EMBED_NORMALIZE | 1 (default): unit L2 norm; 0: raw pooled states    |
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from llm_core.pooling_params import PoolingParams

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    enabled: bool
    pooling: PoolingParams


def _setting(key: str, env_name: str, parameters: Mapping[str, str], env: Mapping[str, str], default: str) -> str:
    value = (env.get(env_name) or parameters.get(key, "")).strip()
    return default if not value or value.startswith("${") else value


def _flag(name: str, value: str) -> bool:
    if value.lower() not in _TRUE + _FALSE:
        raise ValueError(f"{name} must be 1 or 0, got {value!r}")
    return value.lower() in _TRUE


def load_embedding_settings(parameters: Mapping[str, str], env: Mapping[str, str] | None = None) -> EmbeddingSettings:
    env = os.environ if env is None else env
    enabled = _flag("LLM_EMBEDDING", _setting("enabled", "LLM_EMBEDDING", parameters, env, "0"))
    mode = _setting("pooling", "LLM_EMBED_POOLING", parameters, env, "last")
    normalize = _flag("LLM_EMBED_NORMALIZE", _setting("normalize", "LLM_EMBED_NORMALIZE", parameters, env, "1"))
    return EmbeddingSettings(enabled, PoolingParams(mode, normalize))


def decode_texts(text_input: np.ndarray) -> list[str]:
    """text_input: [batch, 1] (or [batch]) of bytes/str -> the batch's texts."""
    values = np.asarray(text_input, dtype=object).reshape(-1)
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


class EmbeddingService:
    """One batch of Triton requests -> one engine.embed call (all their texts), split back per request."""

    def __init__(self, engine, pooling: PoolingParams) -> None:
        self.engine = engine  # llm_core.Engine, or None when disabled
        self.pooling = pooling

    def run(self, batch: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray | str]:
        """Per request: its embeddings [n, hidden] fp32, or an error message (a bad request fails alone)."""
        if self.engine is None:
            message = "the embedding model is not enabled on this server (LLM_EMBEDDING=1 / launcher --embedding)"
            return [message] * len(batch)
        results: list[np.ndarray | str] = []
        prompts: list[list[int]] = []
        owners: list[int] = []  # index in results of each prompt
        for i, inputs in enumerate(batch):
            try:
                ids = self._tokenize(inputs)
            except ValueError as exc:
                results.append(str(exc))
                continue
            results.append(np.zeros((0, self.engine.model_config.hidden_size), np.float32))
            prompts += ids
            owners += [i] * len(ids)
        if prompts:
            self._embed_into(results, prompts, owners)
        return results

    def _tokenize(self, inputs: Mapping[str, np.ndarray]) -> list[list[int]]:
        if "text_input" not in inputs:
            raise ValueError("missing input 'text_input'")
        if self.engine.tokenizer is None:
            raise ValueError("the model directory has no tokenizer: text_input cannot be encoded")
        texts = decode_texts(inputs["text_input"])
        ids = [list(self.engine.tokenizer(text)["input_ids"]) for text in texts]
        if not texts or not all(ids):
            raise ValueError("text_input: every text must have at least one token")
        limit = self.engine.max_model_len - 1
        if too_long := [len(p) for p in ids if len(p) > limit]:
            raise ValueError(f"text_input: {max(too_long)} tokens exceed the limit of {limit}")
        return ids

    def _embed_into(self, results: list, prompts: list[list[int]], owners: list[int]) -> None:
        try:
            vectors = self.engine.embed(prompts, pooling=self.pooling.mode, normalize=self.pooling.normalize)
        except (ValueError, RuntimeError) as exc:
            for i in set(owners):
                results[i] = f"embedding failed: {exc}"
            return
        rows: dict[int, list[np.ndarray]] = {}
        for owner, vector in zip(owners, vectors, strict=True):
            rows.setdefault(owner, []).append(vector)
        for i, vecs in rows.items():
            results[i] = np.stack(vecs).astype(np.float32, copy=False)
