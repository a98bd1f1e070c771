"""Every bad input gets an error response that names the problem; the server keeps serving."""

from __future__ import annotations

import base64
import io
import json

import pytest
from e2e_helpers import grpc_stream, http_generate, http_stream
from PIL import Image

pytestmark = pytest.mark.e2e


def _png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 128, 255)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


PNG = _png_b64()
BAD_INPUTS = [
    ("empty prompt", {"text_input": ""}, "text_input"),
    ("blank prompt", {"text_input": "   "}, "text_input"),
    ("prompt longer than the context", {"text_input": "word " * 1500}, "text_input"),
    ("max_tokens 0", {"text_input": "hi", "max_tokens": 0}, "max_tokens"),
    ("max_tokens negative", {"text_input": "hi", "max_tokens": -5}, "max_tokens"),
    ("max_tokens above the context", {"text_input": "hi", "max_tokens": 5000}, "max_tokens"),
    ("invalid base64", {"text_input": "<image> hi", "image": ["@@not base64!!"]}, "image[0]"),
    (
        "not an image",
        {"text_input": "<image> hi", "image": [base64.b64encode(b"plain text, no pixels").decode()]},
        "image[0]",
    ),
    ("bad data URI", {"text_input": "<image> hi", "image": ["data:image/png,rawstuff"]}, "image[0]"),
    ("more tags than images", {"text_input": "<image> and <image>", "image": [PNG]}, "<image>"),
    ("more images than tags", {"text_input": "<image> only one", "image": [PNG, PNG]}, "<image>"),
    ("images without tags", {"text_input": "no tag here", "image": [PNG]}, "<image>"),
    ("malformed JSON", {"text_input": "hi", "sampling_parameters": '{"temperature": 0.5'}, "sampling_parameters"),
    ("JSON not an object", {"text_input": "hi", "sampling_parameters": "[1, 2]"}, "sampling_parameters"),
    ("unknown key", {"text_input": "hi", "sampling_parameters": json.dumps({"temprature": 0.5})}, "temprature"),
    ("wrong type", {"text_input": "hi", "sampling_parameters": json.dumps({"max_tokens": "many"})}, "max_tokens"),
    ("wrong type bool", {"text_input": "hi", "sampling_parameters": json.dumps({"ignore_eos": "maybe"})}, "ignore_eos"),
    ("temperature < 0", {"text_input": "hi", "temperature": -0.5}, "temperature"),
    ("top_p 0", {"text_input": "hi", "top_p": 0.0}, "top_p"),
    ("top_p > 1", {"text_input": "hi", "top_p": 1.5}, "top_p"),
    ("top_k < 0", {"text_input": "hi", "top_k": -1}, "top_k"),
    (
        "JSON temperature < 0",
        {"text_input": "hi", "sampling_parameters": json.dumps({"temperature": "-1"})},
        "temperature",
    ),
    ("beam search", {"text_input": "hi", "beam_width": 4}, "beam_width"),
]


@pytest.mark.parametrize("values,field", [(v, f) for _, v, f in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS])
def test_bad_input_http_generate(triton_server, values, field):
    status, body = http_generate(triton_server.http_url, values)
    assert status == 400, body
    assert field in body["error"], body


def test_bad_inputs_over_grpc_and_sse_then_server_still_serves(triton_server):
    for _, values, field in BAD_INPUTS[::3]:
        result = grpc_stream(triton_server.grpc_url, values)
        assert result.error is not None and field in result.error, (values, result)
        sse = http_stream(triton_server.http_url, values)
        assert sse.error is not None and field in sse.error, (values, sse)
    good = grpc_stream(triton_server.grpc_url, {"text_input": "still alive?", "max_tokens": 8, "temperature": 0.0})
    assert good.error is None and good.num_output_tokens == 8 and good.finish_reason in ("length", "stop")
    status, body = http_generate(triton_server.http_url, {"text_input": "and over HTTP?", "max_tokens": 4})
    assert status == 200 and body["text_output"], body


def test_direct_llm_rejects_bad_requests(triton_server):
    result = grpc_stream(triton_server.grpc_url, {"input_ids": [1, 2, 3], "sampling_parameters": "{oops"}, model="llm")
    assert result.error is not None and "sampling_parameters" in result.error
    result = grpc_stream(triton_server.grpc_url, {"input_ids": [5000], "max_tokens": 4}, model="llm")
    assert result.error is not None and "token ids" in result.error
