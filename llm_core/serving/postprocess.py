"""Postprocess: one llm response -> the ensemble's outputs (stateless).

The llm step makes the text of each response (exact incremental detokenization with the response's
context ids, a stop string's trim applied: `LlmService._text`), so this step only assembles the
outputs the request asked for: the prompt before the first chunk when `exclude_input_in_output` is
false, the finish reason, the token counts, the logprobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from llm_core.serving.request import OutputOptions, scalar


@dataclass(frozen=True, slots=True)
class PostprocessInput:
    request_id: str
    output_ids: list[int]
    text: str  # what output_ids add, made by the llm step
    finish_reason: str  # "" until the last response
    num_input_tokens: int
    response_index: int
    options: OutputOptions
    logprobs: list[float]
    cum_log_prob: float


_SCALAR_INPUTS = {
    "request_id": "",
    "text": "",
    "finish_reason": "",
    "num_input_tokens": 0,
    "response_index": 0,
    "postprocess_options": "",
    "cum_log_probs": 0.0,
}


def _numbers(inputs: Mapping[str, np.ndarray], name: str, kind: type) -> list:
    array = inputs.get(name)
    return [] if array is None else [kind(v) for v in array.reshape(-1)]


def parse_postprocess_input(inputs: Mapping[str, np.ndarray]) -> PostprocessInput:
    values = {name: scalar(inputs.get(name), name, default) for name, default in _SCALAR_INPUTS.items()}
    options = OutputOptions.from_json(values["postprocess_options"])
    return PostprocessInput(
        request_id=values["request_id"],
        output_ids=_numbers(inputs, "output_ids", int),
        text=values["text"],
        finish_reason=values["finish_reason"],
        num_input_tokens=int(values["num_input_tokens"]),
        response_index=int(values["response_index"]),
        options=options,
        logprobs=_numbers(inputs, "output_log_probs", float),
        cum_log_prob=float(values["cum_log_probs"]),
    )


def chunk_text(item: PostprocessInput) -> str:
    if item.response_index == 0 and not item.options.exclude_input_in_output:
        return item.options.prompt + item.text
    return item.text


def postprocess_outputs(item: PostprocessInput) -> dict[str, np.ndarray]:
    """Output name -> array with the batch dim; only the outputs the request asked for."""
    opts = item.options
    text = chunk_text(item)
    out = {"text_output": np.array([[text.encode("utf-8")]], dtype=np.object_)}
    if opts.return_finish_reason and item.finish_reason:  # only the last response has one
        out["finish_reason"] = np.array([[item.finish_reason.encode()]], dtype=np.object_)
    if opts.return_num_input_tokens:
        out["num_input_tokens"] = np.array([[item.num_input_tokens]], np.int32)
    if opts.return_num_output_tokens:
        out["num_output_tokens"] = np.array([[len(item.output_ids)]], np.int32)
    if opts.return_log_probs:
        out["cum_log_probs"] = np.array([[item.cum_log_prob]], np.float32)
        out["output_log_probs"] = np.array(item.logprobs, np.float32).reshape(1, 1, -1)
        out["output_ids"] = np.array([item.output_ids], np.int32)  # the tokens of these logprobs
    return out


class CancelPolls:
    """When to ask Triton whether a request was cancelled. `request.is_cancelled()` is a round trip to the
    server, as long as the rest of this step (py-spy on one H200, W1: 44% of the step's busy time), and a
    stream makes one postprocess request per response; so each llm request is asked at most once per
    `interval_s`. Its first response is not asked (it carries the first token: time to first token), nor its
    last (the engine request has ended). A cancelled stream stops within `interval_s` plus one response."""

    def __init__(self, interval_s: float = 0.25, max_tracked: int = 8192) -> None:
        self.interval_s = interval_s
        self.max_tracked = max_tracked
        self._last: dict[str, float] = {}  # llm request id -> when it was last asked (or first seen)

    def due(self, request_id: str, final: bool, now: float) -> bool:
        if final:
            self._last.pop(request_id, None)
            return False
        last = self._last.get(request_id)
        if last is not None and now - last < self.interval_s:
            return False
        if last is None and len(self._last) >= self.max_tracked:  # streams that never sent a last response
            stale = now - 60 * self.interval_s
            self._last = {k: t for k, t in self._last.items() if t > stale}
        self._last[request_id] = now
        return last is not None


def cancelled_outputs() -> dict[str, np.ndarray]:
    """What a cancelled request gets: nothing reaches the client, but an error response here
    would leave the ensemble request in flight forever in tritonserver 2.51 (it then blocks
    shutdown for the whole exit timeout), so answer normally."""
    return {"text_output": np.array([[b""]], dtype=np.object_)}
