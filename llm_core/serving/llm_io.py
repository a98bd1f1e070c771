"""The llm model's inputs and outputs as plain dataclasses, and the transport it sends through."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from llm_core.sampling_params import SamplingParams
from llm_core.serving.request import (
    InputError,
    as_bool,
    as_int,
    build_sampling_params,
    parse_sampling_json,
    scalar,
)


@dataclass(frozen=True, slots=True)
class LlmRequest:
    prompt_ids: list[int]
    image_embeds: np.ndarray | None  # [num_image_tokens_total, hidden] fp32
    params: SamplingParams
    stream: bool
    from_ensemble: bool  # sent by preprocess (it carries postprocess_options), not by a direct caller
    options: str  # postprocess_options, forwarded to postprocess with every response ("" for direct calls)


def parse_llm_request(inputs: Mapping[str, np.ndarray], default_max_tokens: int) -> LlmRequest:
    """Inputs of the llm model (with the batch dim): input_ids, and optionally image_embeds,
    sampling_parameters (JSON), max_tokens, stream, postprocess_options.

    An ensemble request is one with postprocess_options: its sampling_parameters is the canonical
    JSON of the SamplingParams preprocess built and validated (`SamplingParams.to_json`), rebuilt
    here as it is. A direct call's sampling_parameters is a client's JSON, parsed field by field."""
    ids = inputs.get("input_ids")
    if ids is None or ids.size == 0:
        raise InputError("input_ids", "is empty")
    if ids.ndim == 2 and ids.shape[0] != 1:
        raise InputError("input_ids", f"batch size {ids.shape[0]} is not supported")
    embeds = inputs.get("image_embeds")
    if embeds is not None and embeds.size:  # a text request's is empty ([1, 0, 0] from preprocess)
        if embeds.ndim < 2:
            raise InputError("image_embeds", f"must be [tokens, hidden], got shape {list(embeds.shape)}")
        embeds = np.array(embeds, np.float32).reshape(-1, embeds.shape[-1])  # a copy: the request's memory goes away
    else:
        embeds = None
    from_ensemble = "postprocess_options" in inputs
    values = {name: scalar(inputs.get(name), name) for name in _SCALAR_INPUTS}  # each input read once
    stream = as_bool("stream", values["stream"]) if values["stream"] is not None else False
    if from_ensemble:
        params = _ensemble_params(values["sampling_parameters"] or "")
    else:
        kwargs = parse_sampling_json(values["sampling_parameters"] or "")
        if values["max_tokens"] is not None:
            kwargs["max_tokens"] = as_int("max_tokens", values["max_tokens"])
        params = build_sampling_params(kwargs, default_max_tokens)
    ids = ids.reshape(-1).tolist()  # Python ints
    return LlmRequest(ids, embeds, params, stream, from_ensemble, values["postprocess_options"] or "")


_SCALAR_INPUTS = ("sampling_parameters", "max_tokens", "stream", "postprocess_options")


def _ensemble_params(text: str) -> SamplingParams:
    try:
        return SamplingParams.from_json(text)
    except (TypeError, ValueError) as exc:  # not what preprocess writes: a caller posing as the ensemble
        raise InputError("sampling_parameters", f"is not preprocess's canonical JSON ({exc})") from None


@dataclass(frozen=True, slots=True)
class LlmResponse:
    request_id: str  # the engine's id: postprocess relays cancellation with it
    output_ids: list[int]
    context_ids: list[int]  # ids just before output_ids (a direct caller decodes with them)
    text: str  # the text output_ids add (text_trim already applied): the served text, made once
    finish_reason: str  # "" until the last response
    text_trim: int
    num_input_tokens: int
    response_index: int
    options: str
    logprobs: list[float] | None
    cum_log_prob: float


def _one(value: Any, dtype: Any) -> np.ndarray:
    """`value` as a [1, 1] array (the batch dim and one element): an output of one response."""
    return np.array([[value]], dtype=dtype)


# Output name -> its array (with the batch dim), in the llm model's config order.
_OUTPUTS: dict[str, Callable[[LlmResponse], np.ndarray]] = {
    "output_ids": lambda r: np.array(r.output_ids, np.int32).reshape(1, -1),
    "context_ids": lambda r: np.array(r.context_ids, np.int32).reshape(1, -1),
    "text": lambda r: _one(r.text.encode("utf-8"), np.object_),
    "finish_reason": lambda r: _one(r.finish_reason.encode(), np.object_),
    "text_trim": lambda r: _one(r.text_trim, np.int32),
    "num_input_tokens": lambda r: _one(r.num_input_tokens, np.int32),
    "response_index": lambda r: _one(r.response_index, np.int32),
    "request_id": lambda r: _one(r.request_id.encode(), np.object_),
    "postprocess_options": lambda r: _one(r.options.encode(), np.object_),
    "output_log_probs": lambda r: np.array(r.logprobs or [], np.float32).reshape(1, -1),
    "cum_log_probs": lambda r: _one(r.cum_log_prob, np.float32),
}


def requested_outputs(names: Iterable[str]) -> tuple[str, ...]:
    """The llm outputs among `names` (a request's requested outputs; Triton lists every output when a
    client names none), in config order."""
    wanted = set(names)
    return tuple(name for name in _OUTPUTS if name in wanted)


def response_arrays(response: LlmResponse, names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """The arrays of the outputs `names` only. An ensemble asks the llm step only for the outputs it maps;
    building the others costs shared memory and time on every response, and on the GPU machine the 3.12
    stub of tritonserver 2.51 segfaulted in send() on the first response carrying outputs the ensemble had
    not asked for. The stub's send() releases the GIL and then drops the unasked tensors from the response
    (python_backend's PruneOutputTensors), so their numpy arrays are freed without the GIL held."""
    return [(name, _OUTPUTS[name](response)) for name in names]


class Transport(Protocol):
    """How responses reach the client (pb_utils response senders in the Triton adapter)."""

    def send(self, handle: Any, response: LlmResponse | None, final: bool) -> None: ...

    def send_error(self, handle: Any, message: str, retryable: bool = False) -> None: ...  # also final

    def is_cancelled(self, handle: Any) -> bool: ...
