"""Ensemble request parsing and validation (llm_core.serving.request)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_core.sampling_params import SamplingParams
from llm_core.serving.request import (
    InputError,
    OutputOptions,
    parse_generate_request,
    parse_sampling_json,
)


def _inputs(**values) -> dict[str, np.ndarray]:
    out = {}
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        if isinstance(items[0], str):
            items = [v.encode() for v in items]
            out[name] = np.array([items], dtype=np.object_)
        else:
            out[name] = np.array([items])
    return out


def parse(params: dict | None = None, **values):
    return parse_generate_request(_inputs(**values), params or {}, default_max_tokens=16)


def test_defaults():
    req = parse(text_input="hello")
    assert req.prompt == "hello" and req.images == () and not req.stream
    assert req.params.max_tokens == 16 and req.params.temperature == 1.0
    assert req.options == OutputOptions()


def test_tensor_inputs_override_json_override_parameters():
    req = parse(
        {"temperature": 0.1, "top_k": 3, "unrelated": "ignored"},
        text_input="x",
        sampling_parameters=json.dumps({"temperature": "0.2", "top_p": "0.5"}),
        temperature=np.float32(0.3),
        stream=True,
    )
    assert req.params.temperature == pytest.approx(0.3)
    assert req.params.top_p == 0.5 and req.params.top_k == 3 and req.stream


def test_aliases_and_lists():
    req = parse(
        text_input="x",
        random_seed=np.uint64(7),
        min_length=2,
        stop_words=["END", "", "STOP"],
        end_id=5,
        sampling_parameters=json.dumps({"stop_token_ids": [9], "logprobs": 1}),
    )
    assert req.params.seed == 7 and req.params.min_tokens == 2
    assert req.params.stop == ("END", "STOP") and set(req.params.stop_token_ids) == {5, 9}
    assert req.params.logprobs


def test_output_options_and_echo():
    req = parse(text_input="prompt", exclude_input_in_output=False, return_finish_reason=True, return_log_probs=True)
    assert req.options.prompt == "prompt" and req.options.return_finish_reason
    assert req.params.logprobs  # return_log_probs asks the engine for them
    assert OutputOptions.from_json(req.options.to_json()) == req.options


def test_return_logprobs_is_an_alias_of_return_log_probs():
    """Triton's OpenAI frontend sends `return_logprobs`."""
    req = parse(text_input="prompt", return_logprobs=True)
    assert req.options.return_log_probs and req.params.logprobs
    assert not parse(text_input="prompt", return_logprobs=False).options.return_log_probs


def test_images_are_kept_in_order_and_empty_ones_dropped():
    req = parse(text_input="<image>", image=["AAAA", "", "BBBB"])
    assert req.images == (b"AAAA", b"BBBB")


def test_string_values_accepted_in_json():
    kwargs = parse_sampling_json(
        json.dumps({"max_tokens": "12", "temperature": "0", "ignore_eos": "true", "seed": "3", "stop": "x"})
    )
    assert kwargs == {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True, "seed": 3, "stop": ("x",)}


def test_canonical_json_round_trip():
    req = parse(text_input="x", temperature=np.float32(0.5), stop_words=["a"], seed=np.uint64(1), end_id=7)
    assert SamplingParams.from_json(req.params.to_json()) == req.params
    assert SamplingParams.from_json(SamplingParams().to_json()) == SamplingParams()


@pytest.mark.parametrize(
    "values,field",
    [
        ({"text_input": ""}, "text_input"),
        ({"text_input": "  \n"}, "text_input"),
        ({"text_input": "x", "max_tokens": 0}, "max_tokens"),
        ({"text_input": "x", "max_tokens": -3}, "max_tokens"),
        ({"text_input": "x", "temperature": np.float32(-1)}, "temperature"),
        ({"text_input": "x", "top_p": np.float32(0)}, "top_p"),
        ({"text_input": "x", "top_p": np.float32(1.01)}, "top_p"),
        ({"text_input": "x", "top_k": -1}, "top_k"),
        ({"text_input": "x", "min_tokens": 20, "max_tokens": 4}, "min_tokens"),
        ({"text_input": "x", "sampling_parameters": "{"}, "sampling_parameters"),
        ({"text_input": "x", "sampling_parameters": "[]"}, "sampling_parameters"),
        ({"text_input": "x", "sampling_parameters": '{"tempreature": 1}'}, "sampling_parameters.tempreature"),
        ({"text_input": "x", "sampling_parameters": '{"max_tokens": "lots"}'}, "sampling_parameters.max_tokens"),
        ({"text_input": "x", "sampling_parameters": '{"max_tokens": 2.5}'}, "sampling_parameters.max_tokens"),
        ({"text_input": "x", "sampling_parameters": '{"top_k": true}'}, "sampling_parameters.top_k"),
        ({"text_input": "x", "sampling_parameters": '{"temperature": "NaN"}'}, "sampling_parameters.temperature"),
        ({"text_input": "x", "sampling_parameters": '{"stop": [1]}'}, "sampling_parameters.stop"),
        ({"text_input": "x", "sampling_parameters": '{"n": 2}'}, "sampling_parameters.n"),
        ({"text_input": "x", "beam_width": 2}, "beam_width"),
        ({"text_input": "x", "bad_words": ["no"]}, "bad_words"),
        ({"text_input": "x", "stream": "perhaps"}, "stream"),
    ],
)
def test_errors_name_the_field(values, field):
    with pytest.raises(InputError) as info:
        parse(**values)
    assert str(info.value).startswith(field), str(info.value)


def test_bad_request_parameter_values_are_errors_but_unknown_ones_ignored():
    with pytest.raises(InputError, match="^temperature"):
        parse({"temperature": "hot"}, text_input="x")
    assert parse({"whatever": 1}, text_input="x").params.temperature == 1.0


def test_batch_of_two_is_refused():
    inputs = {"text_input": np.array([[b"a"], [b"b"]], dtype=np.object_)}
    with pytest.raises(InputError, match="batch size 2"):
        parse_generate_request(inputs, {}, 16)
