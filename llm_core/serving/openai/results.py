"""Response bodies and stream chunks of /v1/completions and /v1/chat/completions (plain dicts).

`Delta` is one ensemble response; `Totals` adds them up for usage and the non-streamed answer.
Token strings of logprobs are `tokenizer.decode([id])` (a token that is part of a multi-byte
character shows as U+FFFD; `bytes` are those of that string).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Delta:
    text: str
    num_output_tokens: int = 0
    num_input_tokens: int | None = None
    finish_reason: str | None = None
    token_ids: tuple[int, ...] = ()  # only with logprobs
    logprobs: tuple[float, ...] = ()


@dataclass(slots=True)
class Totals:
    text: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def add(self, delta: Delta) -> None:
        self.text.append(delta.text)
        if delta.num_input_tokens is not None:
            self.prompt_tokens = delta.num_input_tokens
        self.completion_tokens += delta.num_output_tokens
        self.finish_reason = delta.finish_reason or self.finish_reason
        self.token_ids.extend(delta.token_ids)
        self.logprobs.extend(delta.logprobs)

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


class ResponseBuilder:
    """Builds the bodies of one request (`kind`: "completion" or "chat")."""

    def __init__(self, kind: str, request_id: str, model: str, tokenizer: Any, want_logprobs: bool) -> None:
        self.kind = kind
        self.request_id = request_id
        self.model = model
        self.tokenizer = tokenizer
        self.want_logprobs = want_logprobs
        self.created = int(time.time())
        self.text_offset = 0  # completions' logprobs.text_offset: where the next token starts

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.model}

    def _logprobs(self, token_ids: list[int] | tuple[int, ...], logprobs: list[float] | tuple[float, ...]) -> Any:
        if not self.want_logprobs:
            return None
        tokens = [self.tokenizer.decode([t]) for t in token_ids]
        if self.kind == "chat":
            content = [
                {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                for t, lp in zip(tokens, logprobs, strict=True)
            ]
            return {"content": content}
        offsets = []
        for token in tokens:
            offsets.append(self.text_offset)
            self.text_offset += len(token)
        return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": None, "text_offset": offsets}

    def full(self, totals: Totals) -> dict[str, Any]:
        """The non-streamed answer."""
        text = "".join(totals.text)
        choice: dict[str, Any] = {"index": 0, "finish_reason": totals.finish_reason}
        choice["logprobs"] = self._logprobs(totals.token_ids, totals.logprobs)
        if self.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
            body = self._envelope("chat.completion")
        else:
            choice["text"] = text
            body = self._envelope("text_completion")
        return {**body, "choices": [choice], "usage": totals.usage()}

    def chunk(self, delta: Delta, first: bool, include_usage: bool) -> dict[str, Any]:
        """One stream event for one ensemble response."""
        choice: dict[str, Any] = {"index": 0, "logprobs": self._logprobs(delta.token_ids, delta.logprobs)}
        if self.kind == "chat":
            message = {"role": "assistant", "content": delta.text} if first else {"content": delta.text}
            choice["delta"] = message
            body = self._envelope("chat.completion.chunk")
        else:
            choice["text"] = delta.text
            body = self._envelope("text_completion")
        choice["finish_reason"] = delta.finish_reason
        body["choices"] = [choice]
        if include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, totals: Totals) -> dict[str, Any]:
        """The last event with stream_options.include_usage: no choices, the usage."""
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._envelope(obj), "choices": [], "usage": totals.usage()}
