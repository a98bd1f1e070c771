"""A client that cancels stops generation and frees its KV slots within 1 s: calling llm
directly (is_cancelled) and through the ensemble (relayed by postprocess), gRPC and SSE."""

from __future__ import annotations

import json
import queue
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests
import tritonclient.grpc as grpcclient
from e2e_helpers import grpc_inputs, metrics, wait_for_metric

pytestmark = pytest.mark.e2e

LONG = {"max_tokens": 900, "temperature": 0.0}
FREE_WITHIN_S = 1.0


def _slots_busy(server) -> None:
    held, _, value = wait_for_metric(server.metrics_url, "llm_kv_slots_used", lambda v: v > 0, timeout=5)
    assert held, f"the request never showed up in llm_kv_slots_used ({value})"


def _assert_freed(server, cancelled_at: float) -> None:
    held, _, value = wait_for_metric(server.metrics_url, "llm_kv_slots_used", lambda v: v == 0, timeout=5)
    elapsed = time.monotonic() - cancelled_at
    assert held and elapsed <= FREE_WITHIN_S, f"slots used {value} {elapsed:.2f}s after cancelling"
    held, _, value = wait_for_metric(server.metrics_url, "llm_requests_running", lambda v: v == 0, timeout=1)
    assert held, f"still running: {value}"


def _cancel_grpc(server, model: str, values: dict) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer(model, grpc_inputs(values))
    for _ in range(3):
        result, error = responses.get(timeout=60)
        assert error is None, error
    _slots_busy(server)
    client.stop_stream(cancel_requests=True)
    cancelled_at = time.monotonic()
    client.close()
    _assert_freed(server, cancelled_at)


def test_cancel_direct_llm_grpc(triton_server):
    params = json.dumps({**LONG, "ignore_eos": True})
    _cancel_grpc(
        triton_server, "llm", {"input_ids": [1020, 771, 277, 78], "sampling_parameters": params, "stream": True}
    )


def test_cancel_ensemble_grpc(triton_server):
    params = json.dumps({"ignore_eos": True})
    _cancel_grpc(
        triton_server,
        "ensemble",
        {"text_input": "Once upon a time", "sampling_parameters": params, "stream": True, **LONG},
    )


def test_cancel_ensemble_sse_disconnect(triton_server):
    body = {
        "text_input": "Tell me everything",
        "stream": True,
        "sampling_parameters": json.dumps({"ignore_eos": True}),
        **LONG,
    }
    resp = requests.post(
        f"{triton_server.http_url}/v2/models/ensemble/generate_stream", json=body, stream=True, timeout=60
    )
    events = 0
    lines = resp.iter_lines()
    while events < 3:
        events += next(lines).startswith(b"data:")
    _slots_busy(triton_server)  # still connected (leaving the iterator would close the connection)
    resp.close()  # the client goes away
    cancelled_at = time.monotonic()
    _assert_freed(triton_server, cancelled_at)


@pytest.mark.xfail(
    strict=True,
    reason="tritonserver 2.51's HTTP frontend marks a request cancelled only when writing a response to a closed "
    "connection fails; a non-streamed answer writes nothing before it ends, so no model can see the client "
    "go (tried: empty probe responses through a decoupled postprocess, is_cancelled() stayed False, direct "
    "llm calls alike). Streamed requests and the OpenAI API (streamed or not) are cancelled.",
)
@pytest.mark.parametrize("model", ["ensemble", "llm"])
@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
def test_cancel_non_streaming_http_disconnect(triton_server, model, endpoint):
    """A non-streamed answer (`generate`, or `generate_stream` without "stream": true) whose client goes away."""
    if model == "ensemble":
        params = {"text_input": "Tell me everything", "sampling_parameters": json.dumps({"ignore_eos": True}), **LONG}
    else:
        params = {"input_ids": [1020, 771, 277, 78], "sampling_parameters": json.dumps({"ignore_eos": True, **LONG})}
    body = json.dumps(params).encode()
    url = urlsplit(triton_server.http_url)
    before = metrics(triton_server.metrics_url).get("llm_generation_tokens_total", 0.0)
    conn = socket.create_connection((url.hostname, url.port), timeout=30)
    head = (
        f"POST /v2/models/{model}/{endpoint} HTTP/1.1\r\nHost: {url.hostname}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    conn.sendall(head.encode() + body)
    _slots_busy(triton_server)
    time.sleep(0.3)  # a few tokens in
    conn.close()  # the client goes away before its one response
    cancelled_at = time.monotonic()
    _assert_freed(triton_server, cancelled_at)
    generated = metrics(triton_server.metrics_url)["llm_generation_tokens_total"] - before
    assert generated < LONG["max_tokens"], f"ran to the end ({generated} tokens): never cancelled"


def test_server_serves_after_cancellations(triton_server):
    from e2e_helpers import grpc_stream

    result = grpc_stream(
        triton_server.grpc_url,
        {
            "text_input": "after",
            "max_tokens": 6,
            "temperature": 0.0,
            "sampling_parameters": json.dumps({"ignore_eos": True}),
        },
    )
    assert result.error is None and result.num_output_tokens == 6 and result.finish_reason == "length"
