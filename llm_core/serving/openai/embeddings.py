"""/v1/embeddings: served once the model repository has an `embedding` model.

Until then a clear 404 (no such model) or 501 (the model exists, the mapping is not written yet).
Adding it means: an `EmbeddingRequest` in protocol.py, its ensemble inputs here, and one call of
`TritonBackend` that reads the embedding output (non-decoupled: a single response).
"""

from __future__ import annotations

from typing import Any, Protocol

from llm_core.serving.openai.errors import OpenAIError

EMBEDDING_MODEL = "embedding"


class HasModels(Protocol):
    async def has_model(self, name: str) -> bool: ...


async def create_embeddings(backend: HasModels, body: dict[str, Any]) -> dict[str, Any]:
    if not await backend.has_model(EMBEDDING_MODEL):
        raise OpenAIError(
            404,
            f"no embedding model is served: the Triton model repository has no '{EMBEDDING_MODEL}' model",
            "model",
            "model_not_found",
        )
    raise OpenAIError(
        501, f"/v1/embeddings is not mapped to the '{EMBEDDING_MODEL}' model yet", None, "not_implemented"
    )
