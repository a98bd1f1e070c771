"""What the engine hands back: incremental chunks and whole results."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FINISH_REASONS = ("stop", "length", "abort", "error")


@dataclass(slots=True)
class StreamChunk:
    """New token ids of one request since its previous chunk.

    `text_trim` is non-zero only on a final chunk whose stop string began inside a token:
    drop that many characters from the end of the text of all streamed tokens.
    """

    request_id: str
    token_ids: list[int]
    finish_reason: str | None = None
    text_trim: int = 0
    logprobs: list[float] | None = None
    num_prompt_tokens: int = 0
    error: str | None = None
    time: float = 0.0  # time.monotonic() when the engine process received it
    retryable: bool = False  # an error the caller may retry later (engine unavailable), not a bad request
    embedding: np.ndarray | None = None  # [hidden] fp32: the final chunk of an embedding request

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    token_ids: list[int]
    finish_reason: str
    num_prompt_tokens: int
    text: str | None = None
    logprobs: list[float] | None = None
    error: str | None = None
