"""What the engine hands back: incremental chunks and whole results."""

from __future__ import annotations

from dataclasses import dataclass, field

FINISH_REASONS = ("stop", "length", "abort", "error")


@dataclass(slots=True)
class StreamChunk:
    """New token ids of one request since its previous chunk.

    `text_trim` is non-zero only on a final chunk whose stop string began inside a token:
    drop that many characters from the end of the text of all streamed tokens.
    `context_ids` are up to a few ids preceding `token_ids` (prompt tail for the first chunk),
    for stateless detokenization downstream.
    """

    request_id: str
    token_ids: list[int]
    finish_reason: str | None = None
    text_trim: int = 0
    logprobs: list[float] | None = None
    context_ids: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    error: str | None = None
    time: float = 0.0  # time.monotonic() when the engine process received it

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
