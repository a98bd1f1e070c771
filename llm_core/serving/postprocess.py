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


def _ids(inputs: Mapping[str, np.ndarray], name: str) -> list[int]:
    array = inputs.get(name)
    return [] if array is None else [int(t) for t in array.reshape(-1)]


def parse_postprocess_input(inputs: Mapping[str, np.ndarray]) -> PostprocessInput:
    logprobs = inputs.get("output_log_probs")
    return PostprocessInput(
        request_id=scalar(inputs.get("request_id"), "request_id", ""),
        output_ids=_ids(inputs, "output_ids"),
        text=scalar(inputs.get("text"), "text", ""),
        finish_reason=scalar(inputs.get("finish_reason"), "finish_reason", ""),
        num_input_tokens=int(scalar(inputs.get("num_input_tokens"), "num_input_tokens", 0)),
        response_index=int(scalar(inputs.get("response_index"), "response_index", 0)),
        options=OutputOptions.from_json(scalar(inputs.get("postprocess_options"), "postprocess_options", "")),
        logprobs=[] if logprobs is None else [float(v) for v in logprobs.reshape(-1)],
        cum_log_prob=float(scalar(inputs.get("cum_log_probs"), "cum_log_probs", 0.0)),
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


def cancelled_outputs() -> dict[str, np.ndarray]:
    """What a cancelled request gets: nothing reaches the client, but an error response here
    would leave the ensemble request in flight forever in tritonserver 2.51 (it then blocks
    shutdown for the whole exit timeout), so answer normally."""
    return {"text_output": np.array([[b""]], dtype=np.object_)}
