"""OpenAI request bodies -> one `Generation` for the ensemble, validated before it costs anything.

Sampling fields go into the ensemble's `sampling_parameters` JSON (vLLM names), checked here with
the same rules the preprocess step applies (llm_core.serving.request), so a bad value is a 400
naming the field. Fields this server cannot honour are refused, never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_core.serving.openai.chat import ChatPrompt
from llm_core.serving.openai.errors import bad_request, unsupported
from llm_core.serving.openai.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from llm_core.serving.request import InputError, build_sampling_params, sampling_from_mapping

_PASS_THROUGH = (
    "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
)  # fmt: skip
_VALIDATION_MAX_TOKENS = 16  # the ensemble's default when a request gives none


@dataclass(frozen=True, slots=True)
class Generation:
    """What one OpenAI request asks of the ensemble (always streamed from Triton: cancellable)."""

    prompt: str
    images: tuple[str, ...] = ()
    sampling: tuple[tuple[str, Any], ...] = ()  # sampling_parameters JSON items
    logprobs: bool = False
    echo: bool = False

    def ensemble_inputs(self) -> dict[str, np.ndarray]:
        """Input name -> array with the batch dim (max_batch_size 1)."""
        inputs = {
            "text_input": np.array([[self.prompt.encode()]], np.object_),
            "stream": np.array([[True]], np.bool_),
            "sampling_parameters": np.array([[json.dumps(dict(self.sampling)).encode()]], np.object_),
            "exclude_input_in_output": np.array([[not self.echo]], np.bool_),
            "return_finish_reason": np.array([[True]], np.bool_),
            "return_num_input_tokens": np.array([[True]], np.bool_),
            "return_num_output_tokens": np.array([[True]], np.bool_),
            "return_log_probs": np.array([[self.logprobs]], np.bool_),
        }
        if self.images:
            inputs["image"] = np.array([[u.encode() for u in self.images]], np.object_)
        return inputs


def _refuse_unsupported(req: SamplingFields) -> None:
    if req.n not in (None, 1):
        raise unsupported("n", f"only n=1 is supported, got {req.n}; send {req.n} requests instead")
    if req.logit_bias:
        raise unsupported("logit_bias", "is not supported")


def _sampling(req: SamplingFields, max_tokens: int | None) -> dict[str, Any]:
    values = {name: getattr(req, name) for name in _PASS_THROUGH if getattr(req, name) is not None}
    if max_tokens is not None:
        values["max_tokens"] = max_tokens
    if req.stop:
        values["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    try:
        kwargs = sampling_from_mapping(values, "", strict=True)
        build_sampling_params(kwargs, _VALIDATION_MAX_TOKENS if max_tokens is None else max_tokens)
    except InputError as exc:
        raise bad_request(str(exc), exc.field) from None
    return values


def _single_prompt(prompt: Any) -> str:
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise unsupported(
                "prompt", "give one prompt as a string (lists of prompts and token ids are not supported)"
            )
        prompt = prompt[0]
    if not prompt.strip():
        raise bad_request("prompt: is empty", "prompt")
    return prompt


def completion_generation(req: CompletionRequest, default_max_tokens: int | None) -> Generation:
    _refuse_unsupported(req)
    if req.best_of not in (None, 1):
        raise unsupported("best_of", f"only best_of=1 is supported, got {req.best_of}")
    if req.suffix:
        raise unsupported("suffix", "is not supported")
    if req.logprobs not in (None, 0):
        raise unsupported("logprobs", "the engine returns the sampled token's logprob only: use logprobs=0")
    sampling = _sampling(req, req.max_tokens if req.max_tokens is not None else default_max_tokens)
    return Generation(
        _single_prompt(req.prompt), sampling=tuple(sampling.items()), logprobs=req.logprobs == 0, echo=req.echo
    )


def chat_generation(req: ChatCompletionRequest, prompt: ChatPrompt, default_max_tokens: int | None) -> Generation:
    _refuse_unsupported(req)
    if req.tools or req.tool_choice not in (None, "none"):
        raise unsupported("tools", "tool calling is not supported")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise unsupported("response_format", "only {'type': 'text'} is supported")
    if req.top_logprobs:
        raise unsupported("top_logprobs", "the engine returns the sampled token's logprob only: use 0")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    sampling = _sampling(req, max_tokens if max_tokens is not None else default_max_tokens)
    return Generation(prompt.text, prompt.images, tuple(sampling.items()), logprobs=req.logprobs)
