"""Small clients for the e2e tests: gRPC streaming, HTTP generate / generate_stream, metrics."""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field

import numpy as np
import requests
import tritonclient.grpc as grpcclient

TYPES = {
    **dict.fromkeys(("text_input", "sampling_parameters", "stop_words", "bad_words", "image"), "BYTES"),
    **dict.fromkeys(
        (
            "max_tokens",
            "top_k",
            "min_tokens",
            "min_length",
            "end_id",
            "pad_id",
            "beam_width",
            "num_return_sequences",
            "input_ids",
        ),
        "INT32",
    ),
    **dict.fromkeys(("seed", "random_seed"), "UINT64"),
    **dict.fromkeys(
        (
            "temperature",
            "top_p",
            "min_p",
            "repetition_penalty",
            "presence_penalty",
            "frequency_penalty",
            "length_penalty",
        ),
        "FP32",
    ),
}
PROMPTS = ["Hello world", "  two leading spaces", "你好，世界！今天", "emoji 😀🎉 and more", "The quick brown fox"]
ENSEMBLE_DEFAULTS = {"return_finish_reason": True, "return_num_output_tokens": True}
NUMPY = {"BYTES": np.object_, "INT32": np.int32, "UINT64": np.uint64, "FP32": np.float32, "BOOL": np.bool_}


@dataclass
class StreamResult:
    chunks: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0
    num_input_tokens: int | None = None
    error: str | None = None
    output_ids: list[int] = field(default_factory=list)  # direct llm calls

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def grpc_inputs(values: dict) -> list:
    inputs = []
    for name, value in values.items():
        dtype = "BOOL" if isinstance(value, bool) else TYPES[name]
        items = value if isinstance(value, list) else [value]
        if dtype == "BYTES":
            items = [v if isinstance(v, bytes) else str(v).encode() for v in items]
        array = np.array([items], dtype=NUMPY[dtype])
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _add_output(result: StreamResult, res) -> None:
    text = res.as_numpy("text_output")
    if text is not None:
        result.chunks.append(b"".join(text.reshape(-1)).decode("utf-8"))
    ids = res.as_numpy("output_ids")
    if ids is not None:
        result.output_ids.extend(int(t) for t in ids.reshape(-1))
    reason = res.as_numpy("finish_reason")
    if reason is not None and reason.size:
        result.finish_reason = reason.reshape(-1)[0].decode()
    count = res.as_numpy("num_output_tokens")
    if count is not None:
        result.num_output_tokens += int(count.reshape(-1)[0])
    count = res.as_numpy("num_input_tokens")
    if count is not None:
        result.num_input_tokens = int(count.reshape(-1)[0])


def grpc_stream(url: str, values: dict, model: str = "ensemble", timeout: float = 120.0) -> StreamResult:
    """One streaming request over gRPC; collects every chunk until the final response."""
    values = {"stream": True, **(ENSEMBLE_DEFAULTS if model == "ensemble" else {}), **values}
    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    result = StreamResult()
    try:
        client.async_stream_infer(model, grpc_inputs(values), enable_empty_final_response=True)
        deadline = time.monotonic() + timeout
        while True:
            res, err = responses.get(timeout=max(deadline - time.monotonic(), 0.1))
            if err is not None:
                result.error = str(err)
                break
            _add_output(result, res)
            if res.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return result


def http_generate(base: str, values: dict, model: str = "ensemble") -> tuple[int, dict]:
    resp = requests.post(f"{base}/v2/models/{model}/generate", json=values, timeout=120)
    return resp.status_code, resp.json()


def http_stream(base: str, values: dict, model: str = "ensemble") -> StreamResult:
    values = {"stream": True, **ENSEMBLE_DEFAULTS, **values}
    result = StreamResult()
    with requests.post(f"{base}/v2/models/{model}/generate_stream", json=values, stream=True, timeout=120) as resp:
        for line in resp.iter_lines():
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                result.error = event["error"]
                break
            result.chunks.append(event.get("text_output", ""))
            if event.get("finish_reason"):
                result.finish_reason = (
                    event["finish_reason"][0] if isinstance(event["finish_reason"], list) else event["finish_reason"]
                )
            result.num_output_tokens += int(event.get("num_output_tokens", 0))
    return result


def metrics(url: str) -> dict[str, float]:
    """Unlabeled llm_* / visual_* samples of the metrics endpoint."""
    out = {}
    for line in requests.get(url, timeout=10).text.splitlines():
        if line.startswith(("llm_", "visual_")) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_for_metric(url: str, name: str, predicate, timeout: float) -> tuple[bool, float, float]:
    """Poll until predicate(value) holds; -> (held, seconds waited, last value)."""
    start = time.monotonic()
    value = float("nan")
    while True:
        value = metrics(url).get(name, float("nan"))
        elapsed = time.monotonic() - start
        if predicate(value):
            return True, elapsed, value
        if elapsed > timeout:
            return False, elapsed, value
        time.sleep(0.05)
