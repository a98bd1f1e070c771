"""The clients' request building and response parsing against the ensemble interface (docs/SERVING.md)."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

CLIENTS = Path(__file__).resolve().parents[2] / "clients"
sys.path.insert(0, str(CLIENTS))

import common  # noqa: E402
from common import Chunk, GenerateRequest, RequestTimer  # noqa: E402

# Triton type of each input the clients may send, from the interface table.
INTERFACE = {
    "text_input": "BYTES",
    "max_tokens": "INT32",
    "stream": "BOOL",
    "temperature": "FP32",
    "top_p": "FP32",
    "min_p": "FP32",
    "repetition_penalty": "FP32",
    "presence_penalty": "FP32",
    "frequency_penalty": "FP32",
    "top_k": "INT32",
    "min_tokens": "INT32",
    "seed": "UINT64",
    "stop_words": "BYTES",
    "sampling_parameters": "BYTES",
    "image": "BYTES",
    "return_finish_reason": "BOOL",
    "return_num_input_tokens": "BOOL",
    "return_num_output_tokens": "BOOL",
}
FULL = GenerateRequest(
    prompt="<image> <image> Describe 世界 🙂",
    max_tokens=7,
    stream=True,
    images=(base64.b64encode(b"\x89PNG one").decode(), base64.b64encode(b"two").decode()),
    sampling={
        "temperature": 0.5,
        "top_p": 0.9,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.3,
        "top_k": 5,
        "min_tokens": 2,
        "seed": 2**63 + 1,
    },
    stop_words=("\n\n", "END"),
    sampling_parameters='{"temperature": "0.5"}',
)


def test_grpc_inputs_match_the_interface_table():
    inputs = {t.name(): t for t in common.grpc_inputs(FULL)}
    assert {name: t.datatype() for name, t in inputs.items()} == INTERFACE
    for name, tensor in inputs.items():
        expected = [1, 2] if name in ("image", "stop_words") else [1, 1]
        assert tensor.shape() == expected, name


def test_input_arrays_values():
    arrays = common.input_arrays(FULL)
    assert arrays["text_input"][0, 0].decode("utf-8") == FULL.prompt
    assert arrays["seed"][0, 0] == 2**63 + 1 and arrays["seed"].dtype == np.uint64
    assert arrays["temperature"][0, 0] == np.float32(0.5)
    assert [base64.b64decode(x) for x in arrays["image"][0]] == [b"\x89PNG one", b"two"]
    assert all(arrays[name][0, 0] for name in common.RETURN_FLAGS)


def test_minimal_request_leaves_optional_inputs_out():
    arrays = common.input_arrays(GenerateRequest(prompt="hi", stream=False))
    assert set(arrays) == {"text_input", "stream", *common.RETURN_FLAGS}
    assert not arrays["stream"][0, 0]


def test_http_body_has_the_same_fields_as_json():
    body = json.loads(json.dumps(common.http_body(FULL)))
    assert set(body) == set(INTERFACE)
    assert body["text_input"] == FULL.prompt and body["max_tokens"] == 7 and body["stream"] is True
    assert body["image"] == list(FULL.images) and body["stop_words"] == ["\n\n", "END"]
    assert body["seed"] == 2**63 + 1 and body["top_k"] == 5


def test_unknown_sampling_field_is_rejected():
    with pytest.raises(ValueError, match="topk"):
        GenerateRequest(prompt="hi", sampling={"topk": 3})


def test_encode_image_is_base64_of_the_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x00\x01image bytes")
    assert base64.b64decode(common.encode_image(path)) == b"\x00\x01image bytes"


def _infer_result(outputs: dict[str, np.ndarray], final: bool):
    from tritonclient.grpc import InferResult, service_pb2
    from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

    response = service_pb2.ModelInferResponse(id="r1")
    for name, array in outputs.items():
        out = response.outputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=list(array.shape))
        raw = serialize_byte_tensor(array).item() if array.dtype == np.object_ else array.tobytes()
        response.raw_output_contents.append(raw)
        assert out.name == name
    if final:
        response.parameters["triton_final_response"].bool_param = True
    return InferResult(response)


def test_chunk_from_grpc():
    result = _infer_result(
        {
            "text_output": np.array([[" 世界🙂".encode()]], dtype=np.object_),
            "finish_reason": np.array([[b"length"]], dtype=np.object_),
            "num_input_tokens": np.array([[12]], dtype=np.int32),
            "num_output_tokens": np.array([[3]], dtype=np.int32),
        },
        final=True,
    )
    assert common.chunk_from_grpc(result) == Chunk(" 世界🙂", "length", 12, 3, final=True)
    empty_final = common.chunk_from_grpc(_infer_result({}, final=True))
    assert empty_final == Chunk("", final=True)
    no_reason = _infer_result({"finish_reason": np.array([[b""]], dtype=np.object_)}, final=False)
    assert common.chunk_from_grpc(no_reason).finish_reason is None


def test_chunk_from_json_scalar_and_list_forms():
    assert common.chunk_from_json({"text_output": " hi", "finish_reason": "", "num_output_tokens": 1}) == Chunk(
        " hi", None, None, 1
    )
    assert common.chunk_from_json({"text_output": [" a", "b"], "finish_reason": ["stop"], "num_input_tokens": [4]}) == (
        Chunk(" ab", "stop", 4, None)
    )
    with pytest.raises(RuntimeError, match="boom"):
        common.chunk_from_json({"error": "boom"})


def test_request_timer():
    timer = RequestTimer(start=10.0)
    timer.add(Chunk("a", num_input_tokens=5, num_output_tokens=1), now=10.5)
    timer.add(Chunk("bcd", num_output_tokens=3), now=11.1)
    timer.add(Chunk("e"), now=11.2)  # no count: one token
    timer.add(Chunk("", finish_reason="stop", final=True), now=11.3)  # empty final: not a token
    assert timer.text == "abcde" and timer.num_output_tokens == 5 and timer.finish_reason == "stop"
    assert timer.num_input_tokens == 5
    assert timer.ttft == pytest.approx(0.5) and timer.latency == pytest.approx(1.2)
    assert timer.itls() == pytest.approx([0.2, 0.2, 0.2, 0.1])
    assert timer.tokens_per_s == pytest.approx(5 / 1.2)


def test_request_from_args():
    parser = argparse.ArgumentParser()
    common.add_request_args(parser)
    args = parser.parse_args(["hi", "--max-tokens", "9", "--temperature", "0", "--top-k", "3", "--stop", "x"])
    req = common.request_from_args(args)
    assert req == GenerateRequest("hi", 9, True, (), {"temperature": 0.0, "top_k": 3}, ("x",), None)
    with pytest.raises(json.JSONDecodeError):
        common.request_from_args(parser.parse_args(["hi", "--sampling-parameters", "{bad"]))


def test_bench_requests_and_summary():
    import bench_serving

    args = argparse.Namespace(
        num_requests=20,
        input_len=10,
        input_len_range=0.5,
        output_len=8,
        output_len_range=0.0,
        allow_early_stop=False,
        temperature=None,
        length_dist="uniform",
    )
    reqs = bench_serving.make_requests(args, np.random.default_rng(0))
    assert len(reqs) == 20 and all(5 <= len(r.prompt.split()) <= 15 for r in reqs)
    assert all(r.max_tokens == 8 and r.sampling == {"min_tokens": 8} for r in reqs)
    # The W1 shape: lognormal lengths with the asked means, clipped to 4..max_len.
    shaped = argparse.Namespace(**{**vars(args), "num_requests": 4000, "input_len": 200, "output_len": 180,
                                   "length_dist": "lognormal", "length_sigma": 0.8, "max_len": 2048})  # fmt: skip
    reqs = bench_serving.make_requests(shaped, np.random.default_rng(0))
    outs = np.array([r.max_tokens for r in reqs])
    ins = np.array([len(r.prompt.split()) for r in reqs])
    assert outs.min() >= 4 and outs.max() <= 2048 and abs(outs.mean() - 180) < 12 and abs(ins.mean() - 200) < 12
    assert np.median(outs) < 0.8 * outs.mean()  # skewed: most requests short, a long tail
    # The W1 preset draws the kit's lengths (its seed, its order): those of benchmarks/engine_workload.py.
    from benchmarks.engine_workload import WORKLOADS, lengths

    preset = argparse.Namespace(**{**vars(shaped), **bench_serving.WORKLOADS["W1"], "length_sigma": 0.8})
    reqs = bench_serving.make_requests(preset, np.random.default_rng(preset.seed))
    kit_rng = np.random.default_rng(1234)
    _, _, in_spec, out_spec = WORKLOADS["W1"]
    kit_ins, kit_outs = lengths(in_spec, 1000, kit_rng, 1.0), lengths(out_spec, 1000, kit_rng, 1.0)
    assert [len(r.prompt.split()) for r in reqs] == kit_ins and [r.max_tokens for r in reqs] == kit_outs
    assert max(kit_outs) == 1842 and kit_outs.index(1842) == 840
    timer = RequestTimer(start=0.0)
    for i in range(4):
        timer.add(Chunk("x", num_input_tokens=10, num_output_tokens=1), now=0.1 * (i + 1))
    summary = bench_serving.summarize([timer, RuntimeError("bad")], duration_s=2.0)
    assert summary["completed"] == 1 and summary["failed"] == 1 and summary["errors"] == ["RuntimeError: bad"]
    assert summary["output_token_throughput"] == pytest.approx(2.0)
    assert summary["ttft_ms"]["p50"] == pytest.approx(100.0) and summary["itl_ms"]["p99"] == pytest.approx(100.0)


@pytest.mark.parametrize("script", ["grpc_stream.py", "http_sse.py", "bench_serving.py"])
def test_cli_help(script):
    out = subprocess.run([sys.executable, str(CLIENTS / script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_locustfile_lists_both_users():
    cmd = [sys.executable, "-m", "locust", "-f", str(CLIENTS / "locustfile.py"), "--list"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "GrpcStreamUser" in out.stdout and "HttpSseUser" in out.stdout


def test_llm_direct_inputs_and_incremental_decoding():
    import llm_direct

    req = GenerateRequest(
        "hi", max_tokens=4, sampling={"temperature": 0.0}, stop_words=("x",), sampling_parameters='{"top_k": 2}'
    )
    arrays = llm_direct.llm_input_arrays(req, [5, 6, 7])
    assert arrays["input_ids"].dtype == np.int32 and arrays["input_ids"].tolist() == [[5, 6, 7]]
    assert json.loads(arrays["sampling_parameters"][0, 0]) == {"temperature": 0.0, "top_k": 2, "stop": ["x"]}
    assert arrays["max_tokens"].tolist() == [[4]] and arrays["stream"].tolist() == [[True]]
    with pytest.raises(ValueError, match="images"):
        llm_direct.llm_input_arrays(GenerateRequest("<image>", images=("aGk=",)), [1])

    class ByteTokenizer:  # one UTF-8 byte per id
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    decoder = llm_direct.IncrementalDecoder(ByteTokenizer())
    data = " 世界🙂".encode()
    deltas = [decoder.add([b], final=False) for b in data]
    assert "".join(deltas) == " 世界🙂" and "\ufffd" not in "".join(deltas)


def test_bench_a_request_that_never_ends_fails_after_the_timeout(monkeypatch):
    import asyncio

    import bench_serving

    class Client:  # the gRPC client of a server that accepted the stream and then said nothing
        def __init__(self, url):
            pass

        async def stream_infer(self, requests):
            await asyncio.sleep(3600)
            yield None, None

        async def close(self):
            pass

    monkeypatch.setattr(bench_serving.grpcclient_aio, "InferenceServerClient", Client)
    args = argparse.Namespace(url="x", model="ensemble", concurrency=2, request_rate=float("inf"), warmup=0,
                              no_progress=True, request_timeout=0.2)  # fmt: skip
    reqs = [GenerateRequest("hi", 4, True, (), {}, (), None)] * 3
    start = time.monotonic()
    results, _ = asyncio.run(bench_serving.run_workload(args, reqs, np.random.default_rng(0)))
    assert time.monotonic() - start < 5
    assert all(isinstance(r, TimeoutError) and "--request-timeout 0.2" in str(r) for r in results), results
