"""Postprocess: one llm response -> the ensemble's outputs (stateless, exact text).

Each llm response carries its new token ids and the ids just before them, so the text delta is
`decode_delta(context, new, final)` with no state kept between requests (docs/SERVING.md). A final
response may ask to trim the end of the text (a stop string that began inside a token); the
engine holds such tokens back until the match, so the trim falls inside this last delta.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_core.detokenizer import decode_delta
from llm_core.serving.request import OutputOptions, scalar


@dataclass(frozen=True, slots=True)
class PostprocessInput:
    request_id: str
    output_ids: list[int]
    context_ids: list[int]
    finish_reason: str  # "" until the last response
    text_trim: int
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
        context_ids=_ids(inputs, "context_ids"),
        finish_reason=scalar(inputs.get("finish_reason"), "finish_reason", ""),
        text_trim=int(scalar(inputs.get("text_trim"), "text_trim", 0)),
        num_input_tokens=int(scalar(inputs.get("num_input_tokens"), "num_input_tokens", 0)),
        response_index=int(scalar(inputs.get("response_index"), "response_index", 0)),
        options=OutputOptions.from_json(scalar(inputs.get("postprocess_options"), "postprocess_options", "")),
        logprobs=[] if logprobs is None else [float(v) for v in logprobs.reshape(-1)],
        cum_log_prob=float(scalar(inputs.get("cum_log_probs"), "cum_log_probs", 0.0)),
    )


def chunk_text(tokenizer: Any, item: PostprocessInput) -> str:
    final = bool(item.finish_reason)
    text = decode_delta(tokenizer, item.context_ids, item.output_ids, final)
    if final and item.text_trim:
        text = text[: max(len(text) - item.text_trim, 0)]
    if item.response_index == 0 and not item.options.exclude_input_in_output:
        text = item.options.prompt + text
    return text


def postprocess_outputs(tokenizer: Any, item: PostprocessInput) -> dict[str, np.ndarray]:
    """Output name -> array with the batch dim; only the outputs the request asked for."""
    opts = item.options
    text = chunk_text(tokenizer, item)
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
