"""Ensemble request parsing: Triton inputs + request parameters -> one validated GenerateRequest.

Sources of sampling settings, later ones winning: request parameters (`request.parameters()`),
the `sampling_parameters` JSON input (vLLM style; values may be strings), the individual input
tensors (TensorRT-LLM style). Unknown keys are an error in `sampling_parameters` (a typo must not
silently fall back to a default) but ignored in request parameters, where clients and Triton put
unrelated things. Every problem raises InputError whose message starts with the field's name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llm_core.sampling_params import SamplingParams


class InputError(ValueError):
    """A client error; str() names the offending field first ("temperature: must be >= 0")."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def as_int(field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InputError(field, f"expected an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputError(field, f"expected an integer, got {value!r}")


def as_float(field: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InputError(field, f"expected a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise InputError(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(field, f"expected a finite number, got {value!r}")
    return number


def as_bool(field: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise InputError(field, f"expected a boolean, got {value!r}")


def as_strings(field: str, value: Any) -> tuple[str, ...]:
    """A string or a list of strings; empty strings are dropped (clients send "" for none)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, bytes):
            item = item.decode("utf-8", errors="strict")
        if not isinstance(item, str):
            raise InputError(field, f"expected a string or a list of strings, got {value!r}")
        if item:
            out.append(item)
    return tuple(out)


def as_ints(field: str, value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return tuple(as_int(field, item) for item in items)


def _must_equal(expected: Any, convert):
    def check(field: str, value: Any) -> Any:
        if value is None:
            return expected
        got = convert(field, value)
        if got != expected:
            raise InputError(field, f"only {expected!r} is supported, got {value!r}")
        return got

    return check


def _ignored_float(field: str, value: Any) -> None:
    as_float(field, value)  # validated, then ignored (beam search only)


def _ignored_int(field: str, value: Any) -> None:
    as_int(field, value)


def as_logprobs(field: str, value: Any) -> bool:
    """vLLM sends the number of top logprobs (we return the sampled token's only); others a bool."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) >= 0:
        return int(value) > 0
    return as_bool(field, value)


def _no_strings(field: str, value: Any) -> tuple[str, ...]:
    if as_strings(field, value):
        raise InputError(field, "is not supported")
    return ()


# key -> (SamplingParams field or None, converter). Aliases map to the same field.
_FIELDS: dict[str, tuple[str | None, Any]] = {
    "max_tokens": ("max_tokens", as_int),
    "temperature": ("temperature", as_float),
    "top_k": ("top_k", as_int),
    "top_p": ("top_p", as_float),
    "min_p": ("min_p", as_float),
    "repetition_penalty": ("repetition_penalty", as_float),
    "presence_penalty": ("presence_penalty", as_float),
    "frequency_penalty": ("frequency_penalty", as_float),
    "seed": ("seed", as_int),
    "random_seed": ("seed", as_int),
    "min_tokens": ("min_tokens", as_int),
    "min_length": ("min_tokens", as_int),
    "stop": ("stop", as_strings),
    "stop_words": ("stop", as_strings),
    "stop_token_ids": ("stop_token_ids", as_ints),
    "end_id": ("stop_token_ids", as_ints),
    "ignore_eos": ("ignore_eos", as_bool),
    "logprobs": ("logprobs", as_logprobs),
    "return_log_probs": ("logprobs", as_bool),
    "length_penalty": (None, _ignored_float),
    "pad_id": (None, _ignored_int),
    "beam_width": (None, _must_equal(1, as_int)),
    "num_return_sequences": (None, _must_equal(1, as_int)),
    "n": (None, _must_equal(1, as_int)),
    "best_of": (None, _must_equal(1, as_int)),
    "use_beam_search": (None, _must_equal(False, as_bool)),
    "skip_special_tokens": (None, _must_equal(True, as_bool)),
    "bad_words": (None, _no_strings),
}
SAMPLING_KEYS = frozenset(_FIELDS)


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """What postprocess returns besides text_output (travels llm -> postprocess as JSON)."""

    exclude_input_in_output: bool = True
    return_finish_reason: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    return_log_probs: bool = False
    prompt: str = ""  # prepended to the first chunk when exclude_input_in_output is false

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> OutputOptions:
        return cls(**json.loads(text)) if text else cls()


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    prompt: str
    images: tuple[bytes, ...]
    params: SamplingParams
    stream: bool
    options: OutputOptions


def sampling_from_mapping(values: Mapping[str, Any], source: str, strict: bool) -> dict[str, Any]:
    """Keyword arguments for SamplingParams from a mapping of (aliased) keys."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _FIELDS:
            if strict:
                raise InputError(f"{source}.{key}" if source else key, "unknown sampling parameter")
            continue
        field, convert = _FIELDS[key]
        label = f"{source}.{key}" if source else key
        converted = convert(label, value) if value is not None else None
        if field is None or converted is None:
            continue
        if field == "stop_token_ids" and key == "end_id":
            converted = tuple(out.get("stop_token_ids", ())) + converted
        out[field] = converted
    return out


def parse_sampling_json(text: str | bytes, field: str = "sampling_parameters") -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not text.strip():
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(field, f"malformed JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(values, dict):
        raise InputError(field, f"must be a JSON object, got {type(values).__name__}")
    return sampling_from_mapping(values, field, strict=True)


def build_sampling_params(kwargs: dict[str, Any], default_max_tokens: int) -> SamplingParams:
    kwargs = {"max_tokens": default_max_tokens, **kwargs}
    if kwargs["max_tokens"] <= 0:
        raise InputError("max_tokens", f"must be >= 1, got {kwargs['max_tokens']}")
    try:
        return SamplingParams(**kwargs)
    except ValueError as exc:  # SamplingParams names the field first: "top_p must be in (0, 1]"
        message = str(exc)
        field = message.split(" ", 1)[0]
        raise InputError(field, message.split(" ", 1)[1] if " " in message else message) from None


def _text(field: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            field, f"is not valid UTF-8 (byte {exc.start}: {value[exc.start : exc.start + 4]!r})"
        ) from None


def scalar(array: np.ndarray | None, field: str = "", default: Any = None) -> Any:
    """The first element of an input tensor as a Python value (`default` when absent or empty); bytes are
    decoded as UTF-8, and an error names `field` if they are not."""
    flat = np.asarray(array).reshape(-1) if array is not None else np.empty(0)
    if flat.size == 0:
        return default
    value = flat[0]
    return _text(field, value) if isinstance(value, bytes) else value.item()


def _string_list(array: np.ndarray, field: str) -> list[Any]:
    return [_text(field, v) if isinstance(v, bytes) else v for v in np.asarray(array).reshape(-1)]


_LIST_INPUTS = ("stop_words", "bad_words")
_OPTION_INPUTS = (
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
    "return_log_probs",
)
_INPUT_ALIASES = {"return_logprobs": "return_log_probs"}  # the name Triton's OpenAI frontend sends


def _merge(kwargs: dict[str, Any], later: dict[str, Any]) -> None:
    """Later sources override earlier ones, except stop token ids, which add up (end_id + JSON list)."""
    for key, value in later.items():
        if key == "stop_token_ids" and key in kwargs:
            value = tuple(dict.fromkeys(kwargs[key] + value))
        kwargs[key] = value


def _check_batch(inputs: Mapping[str, np.ndarray]) -> None:
    for name, array in inputs.items():
        if array.ndim >= 1 and array.shape[0] > 1:
            raise InputError(name, f"batch size {array.shape[0]} is not supported; send one request per prompt")


def parse_generate_request(
    inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any], default_max_tokens: int
) -> GenerateRequest:
    """Ensemble inputs (numpy, with the batch dim) + request parameters -> GenerateRequest."""
    inputs = {_INPUT_ALIASES.get(name, name): array for name, array in inputs.items()}
    _check_batch(inputs)
    if "text_input" not in inputs:
        raise InputError("text_input", "is required (the prompt; see the ensemble's inputs)")
    prompt = scalar(inputs["text_input"], "text_input")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("text_input", "prompt is empty")
    kwargs = sampling_from_mapping(parameters, "", strict=False)
    if "sampling_parameters" in inputs:
        _merge(kwargs, parse_sampling_json(scalar(inputs["sampling_parameters"], "sampling_parameters") or ""))
    tensor_values = {}
    for name in SAMPLING_KEYS & inputs.keys():
        array = inputs[name]
        tensor_values[name] = _string_list(array, name) if name in _LIST_INPUTS else scalar(array, name)
    _merge(kwargs, sampling_from_mapping(tensor_values, "", strict=True))
    flags = {name: as_bool(name, parameters[name]) for name in _OPTION_INPUTS if name in parameters}
    flags.update({name: as_bool(name, scalar(inputs[name])) for name in _OPTION_INPUTS if name in inputs})
    if flags.get("return_log_probs"):
        kwargs["logprobs"] = True
    stream = "stream" in inputs and as_bool("stream", scalar(inputs["stream"]))
    if "stream" not in inputs and "stream" in parameters:
        stream = as_bool("stream", parameters["stream"])
    options = OutputOptions(**flags)
    if not options.exclude_input_in_output:
        options = OutputOptions(**{**asdict(options), "prompt": prompt})
    raw_images = np.asarray(inputs["image"]).reshape(-1) if "image" in inputs else ()
    images = tuple(v if isinstance(v, bytes) else str(v).encode() for v in raw_images)
    images = tuple(v for v in images if v)  # "" means no image (clients send it for none)
    params = build_sampling_params(kwargs, default_max_tokens)
    return GenerateRequest(prompt, images, params, stream, options)
