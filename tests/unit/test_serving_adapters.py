"""The model.py adapters with a stand-in for triton_python_backend_utils (no server)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest

from llm_core.serving import watchdog
from llm_core.serving.postprocess import CancelPolls

REPO = Path(__file__).resolve().parents[2] / "model_repository"


class Tensor:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def as_numpy(self):
        return self.value


class Response:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name: t.value for t in output_tensors}
        self.error = error


class Request:
    def __init__(self, inputs: dict, parameters: dict | None = None, cancelled: bool = False):
        self.values, self._parameters, self.cancelled = inputs, parameters or {}, cancelled

    def inputs(self):  # pb_utils.Tensor's name is a method
        return [SimpleNamespace(name=lambda n=n: n, as_numpy=lambda v=v: v) for n, v in self.values.items()]

    def parameters(self):
        return json.dumps(self._parameters)

    def is_cancelled(self):
        return self.cancelled


def _fake_pb() -> ModuleType:
    pb = ModuleType("triton_python_backend_utils")
    pb.Tensor = Tensor
    pb.InferenceResponse = Response
    pb.TritonError = lambda message: SimpleNamespace(message=message)
    pb.Logger = SimpleNamespace(log_info=lambda m: None, log_error=lambda m: None)
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    return pb


@pytest.fixture
def load_model(monkeypatch, tiny_llava, tmp_path):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb())
    monkeypatch.setattr(watchdog, "_watchdog", object())  # no parent watchdog for pytest
    monkeypatch.setenv("LLM_MODEL_DIR", str(tiny_llava))
    monkeypatch.setenv("LLM_SERVING_RUNTIME_DIR", str(tmp_path))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"adapter_{name}", REPO / name / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        config = (REPO / name / "config.pbtxt").read_text()
        names = [line.split('"')[1] for line in config.split("output [")[0].splitlines() if "name:" in line][1:]
        model.initialize({"model_config": json.dumps({"input": [{"name": n} for n in names], "parameters": {}})})
        return model

    return load


def test_preprocess_adapter_maps_errors_to_error_responses(load_model):
    model = load_model("preprocess")
    good = Request({"text_input": np.array([[b"hello"]], np.object_)}, {"max_tokens": 4})
    bad = Request({"text_input": np.array([[b"hello"]], np.object_), "top_k": np.array([[-2]], np.int32)})
    responses = model.execute([good, bad])
    assert responses[0].error is None and responses[0].outputs["input_ids"].shape[0] == 1
    assert json.loads(responses[0].outputs["sampling_parameters"][0, 0])["max_tokens"] == 4
    assert responses[1].error.message.startswith("top_k")


def test_postprocess_adapter_decodes_and_relays_cancellation(load_model, tmp_path):
    model = load_model("postprocess")
    model.cancel_polls = CancelPolls(interval_s=0.0)  # every response of a stream but its first and last

    def inputs(finish_reason: bytes = b"") -> dict:
        return {
            "output_ids": np.array([[72, 105]], np.int32),
            "text": np.array([[b"Hi"]], np.object_),
            "finish_reason": np.array([[finish_reason]], np.object_),
            "request_id": np.array([[b"llm-1"]], np.object_),
            "postprocess_options": np.array([[b'{"return_finish_reason": true}']], np.object_),
        }

    try:
        first, cancelled = model.execute([Request(inputs(), cancelled=True), Request(inputs(), cancelled=True)])
        assert first.outputs["text_output"].tolist() == [[b"Hi"]]  # a stream's first response is not asked
        assert cancelled.error is None and cancelled.outputs["text_output"].tolist() == [[b""]]
        (last,) = model.execute([Request(inputs(b"length"), cancelled=True)])  # nor its last
        assert last.outputs["finish_reason"].tolist() == [[b"length"]] and last.outputs["text_output"].shape == (1, 1)
    finally:
        model.finalize()


def _warmup_inputs(name: str) -> dict:
    """The model_warmup request of `name`'s config.pbtxt as tritonserver builds it: zero_data (zeros, empty
    strings) or input_data_file (the raw tensor; strings as 4-byte little-endian length + bytes)."""
    config = (REPO / name / "config.pbtxt").read_text().split("model_warmup [")[1]
    kinds = {"TYPE_INT32": np.int32, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_}
    inputs = {}
    for line in config.splitlines():
        if "key:" not in line:
            continue
        key, kind = line.split('key: "')[1].split('"')[0], kinds[line.split("data_type: ")[1].split()[0]]
        if "input_data_file" in line:
            raw = (REPO / name / "warmup" / line.split('input_data_file: "')[1].split('"')[0]).read_bytes()
            assert kind is np.object_ and int.from_bytes(raw[:4], "little") == len(raw) - 4
            inputs[key] = np.array([[raw[4:]]], np.object_)
        else:
            inputs[key] = np.array([[b""]], np.object_) if kind is np.object_ else np.zeros((1, 1), kind)
    return inputs


def test_postprocess_warmup_request_is_answered_and_leaves_no_state(load_model):
    # tritonserver sends it before the model is ready; an error response there would fail the model's load.
    inputs = _warmup_inputs("postprocess")
    model = load_model("postprocess")
    try:
        assert set(inputs) == set(model.inputs)  # every input of the config, no other
        (response,) = model.execute([Request(inputs)])
    finally:
        model.finalize()
    assert response.error is None and response.outputs["text_output"].tolist() == [[b""]]
    assert model.cancel_polls._last == {}  # a last response: no stream left to poll


def test_embedding_adapter_batches_texts_and_splits_per_request(load_model, monkeypatch, tiny_qwen2):
    monkeypatch.setenv("LLM_MODEL_DIR", str(tiny_qwen2))
    monkeypatch.setenv("LLM_EMBEDDING", "1")
    monkeypatch.setenv("LLM_EMBED_POOLING", "mean")
    model = load_model("embedding")
    texts = [b"hello world", b"a", b"the embedding of a longer sentence"]
    one = Request({"text_input": np.array([[texts[0]]], np.object_)})
    many = Request({"text_input": np.array([[t] for t in texts], np.object_)})
    missing = Request({})
    try:
        first, second, bad = model.execute([one, many, missing])
        tokenizer = model.engine.tokenizer
        expected = model.engine.embed([tokenizer(t.decode())["input_ids"] for t in texts], pooling="mean")
    finally:
        model.finalize()
    assert first.error is None and second.error is None and bad.error.message == "missing input 'text_input'"
    assert first.outputs["embedding"].shape == (1, expected.shape[1])
    np.testing.assert_allclose(first.outputs["embedding"][0], expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.outputs["embedding"], expected, rtol=1e-5, atol=1e-6)
    assert second.outputs["embedding"].dtype == np.float32


def test_embedding_adapter_is_inert_unless_enabled(load_model, monkeypatch):
    monkeypatch.delenv("LLM_EMBEDDING", raising=False)
    model = load_model("embedding")
    (response,) = model.execute([Request({"text_input": np.array([[b"hi"]], np.object_)})])
    assert model.engine is None and "LLM_EMBEDDING=1" in response.error.message
    model.finalize()
