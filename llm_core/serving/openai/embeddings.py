"""/v1/embeddings over the repository's `embedding` model (llm_core/serving/embedding.py): the input texts go
in one non-decoupled request, the pooled vectors come back in OpenAI's list format.

A repository without that model gets 404; a server whose embedding model is not enabled (it starts no engine
unless LLM_EMBEDDING=1 / `launcher --embedding`) gets 503 with the model's own message saying how to enable it.
Vectors go out as float lists or, with `encoding_format: "base64"` (the official client's default), as base64
of little-endian float32. Token arrays as input and `dimensions` are refused with 400.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

import numpy as np

from llm_core.serving.openai.errors import OpenAIError

EMBEDDING_MODEL = "embedding"


class EmbeddingBackend(Protocol):
    async def has_model(self, name: str) -> bool: ...

    async def embed(self, texts: list[str]) -> np.ndarray: ...  # [n, hidden] fp32


def embedding_texts(body: dict[str, Any]) -> list[str]:
    """The `input` of an embeddings request as a list of texts (a string or a list of strings)."""
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise OpenAIError(400, "input: must be a non-empty string or a list of non-empty strings", "input")
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise OpenAIError(400, "encoding_format: must be 'float' or 'base64'", "encoding_format")
    if body.get("dimensions") is not None:
        raise OpenAIError(400, "dimensions: is not supported (the model's hidden size is returned)", "dimensions")
    return texts


async def create_embeddings(backend: EmbeddingBackend, body: dict[str, Any], model: str) -> dict[str, Any]:
    texts = embedding_texts(body)
    if not await backend.has_model(EMBEDDING_MODEL):
        raise OpenAIError(
            404,
            f"no embedding model is served: the Triton model repository has no '{EMBEDDING_MODEL}' model",
            "model",
            "model_not_found",
        )
    vectors = await backend.embed(texts)
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v.tolist()}
        for i, v in enumerate(vectors)
    ]
    # The embedding model does not report token counts.
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}


def _base64(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
