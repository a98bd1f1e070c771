"""The OpenAI-compatible API (started by the launcher next to the session's tritonserver), driven
by the official `openai` client: completions and chat, streamed and not, usage, finish_reason,
stop, seed, logprobs, an image, OpenAI-style errors, a disconnect that frees the KV slots, and the
server started on its own against a running tritonserver."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time

import openai
import pytest
import requests
from e2e_helpers import grpc_stream, wait_for_metric
from PIL import Image
from transformers import AutoTokenizer

from llm_core.serving.server_process import free_ports

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0.0}
FREE_WITHIN_S = 1.5


@pytest.fixture(scope="module")
def client(triton_server):
    with openai.OpenAI(base_url=triton_server.openai_url, api_key="none", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_models_list_the_served_directory(client, triton_server):
    assert [m.id for m in client.models.list().data] == [triton_server.model_dir.name]


def test_completion_equals_the_ensemble_and_counts_usage(client, model, triton_server):
    out = client.completions.create(model=model, prompt="Hello world", max_tokens=12, **GREEDY)
    ref = grpc_stream(
        triton_server.grpc_url,
        {"text_input": "Hello world", "max_tokens": 12, "return_num_input_tokens": True, **GREEDY},
    )
    choice = out.choices[0]
    assert choice.text == ref.text and choice.finish_reason == ref.finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (ref.num_input_tokens, 12)
    assert out.usage.total_tokens == ref.num_input_tokens + 12


def test_streamed_completion_equals_non_streamed(client, model):
    kwargs = {"model": model, "prompt": "emoji 😀🎉 and 你好", "max_tokens": 20, **GREEDY}
    full = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()


def test_stop_string_gives_finish_reason_stop(client, model):
    text = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=24, **GREEDY)
    text = text.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"no usable stop string in {text!r}"
    out = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=24, stop=[stop], **GREEDY)
    assert out.choices[0].finish_reason == "stop" and out.choices[0].text == text[: text.index(stop)]


def test_seed_and_vllm_fields(client, model):
    kwargs = {"model": model, "prompt": "Once", "max_tokens": 8, "temperature": 1.0, "seed": 1234}
    extra = {"top_k": 50, "min_tokens": 8, "ignore_eos": True, "repetition_penalty": 1.1}
    first = client.completions.create(**kwargs, extra_body=extra)
    second = client.completions.create(**kwargs, extra_body=extra)
    assert first.choices[0].text == second.choices[0].text and first.usage.completion_tokens == 8


def test_chat_streamed_and_not(client, model, triton_server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    full = client.chat.completions.create(model=model, messages=messages, max_tokens=16, logprobs=True, **GREEDY)
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=16, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    content = full.choices[0].logprobs.content
    assert len(content) == full.usage.completion_tokens and all(t.logprob <= 0 for t in content)


def _png_data_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 30, 90)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_chat_with_an_image_equals_the_ensemble(client, model, triton_server):
    uri = _png_data_uri()
    content = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "What is this?"}]
    out = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=10, **GREEDY
    )
    tokenizer = AutoTokenizer.from_pretrained(str(triton_server.model_dir))
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is this?"}], tokenize=False, add_generation_prompt=True
    ).removeprefix(tokenizer.bos_token)
    ref = grpc_stream(
        triton_server.grpc_url,
        {"text_input": rendered, "image": [uri], "max_tokens": 10, "return_num_input_tokens": True, **GREEDY},
    )
    assert out.choices[0].message.content == ref.text and out.usage.prompt_tokens == ref.num_input_tokens


@pytest.mark.parametrize(
    "kwargs,status,param",
    [
        ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "word " * 1500}, 400, "text_input"),  # found by the ensemble's preprocess step
        ({"prompt": "hi", "n": 2}, 400, "n"),
        ({"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    ],
    ids=["max_tokens", "too-long", "n", "model"],
)
def test_bad_requests_get_openai_errors(client, model, kwargs, status, param):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**{"model": model, **kwargs})
    assert info.value.status_code == status and info.value.body["param"] == param


def _assert_slots_freed(server) -> None:
    start = time.monotonic()
    held, _, value = wait_for_metric(server.metrics_url, "llm_kv_slots_used", lambda v: v == 0, timeout=5)
    assert held and time.monotonic() - start <= FREE_WITHIN_S, f"slots used {value} after the client left"


def test_disconnect_mid_stream_frees_the_slots(client, model, triton_server):
    body = {"model": model, "prompt": "Tell me everything", "max_tokens": 900, "stream": True, "ignore_eos": True}
    resp = requests.post(f"{triton_server.openai_url}/completions", json=body, stream=True, timeout=60)
    lines = resp.iter_lines()
    assert sum(next(lines).startswith(b"data:") for _ in range(6)) >= 3
    held, _, _ = wait_for_metric(triton_server.metrics_url, "llm_kv_slots_used", lambda v: v > 0, timeout=5)
    assert held
    resp.close()  # the client goes away mid-stream
    _assert_slots_freed(triton_server)


def test_disconnect_while_waiting_for_a_full_answer_frees_the_slots(model, triton_server):
    body = {"model": model, "prompt": "Tell me everything", "max_tokens": 900, "ignore_eos": True}
    with pytest.raises(requests.Timeout):  # the client gives up and closes the connection
        requests.post(f"{triton_server.openai_url}/completions", json=body, timeout=(10, 1.0))
    _assert_slots_freed(triton_server)


def test_embeddings_need_the_embedding_model_enabled(client, model):
    # The test server starts no embedding engine (LLM_EMBEDDING unset): a clear 503 saying how to enable it.
    with pytest.raises(openai.APIStatusError) as info:
        client.embeddings.create(model=model, input="hi", encoding_format="float")
    assert info.value.status_code == 503 and "LLM_EMBEDDING" in info.value.body["message"]


def test_standalone_server_against_a_running_tritonserver(triton_server, tmp_path):
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "llm_core.serving.openai", f"--triton-url={triton_server.grpc_url}",
           f"--model-dir={triton_server.model_dir}", f"--port={port}", "--served-model-name=tiny",
           "--workers=2"]  # fmt: skip
    log = open(tmp_path / "openai.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0) as c:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    assert [m.id for m in c.models.list().data] == ["tiny"]
                    break
                except openai.APIConnectionError:
                    time.sleep(0.2)
            for name in ("tiny", "ensemble"):  # the Triton model's name is accepted too (benchmark drivers)
                out = c.completions.create(model=name, prompt="Hello", max_tokens=4)
                assert out.usage.completion_tokens == 4 and out.choices[0].finish_reason == "length"
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_inputs_of_tritons_own_openai_frontend_are_accepted(triton_server):
    """What Triton's OpenAI frontend sends in TRT-LLM mode (plus return_logprobs of its vLLM mode)."""
    values = {
        "text_input": "Hello world", "stream": True, "max_tokens": 6, "stop_words": ["never-in-output"],
        "top_p": 0.9, "frequency_penalty": 0.0, "presence_penalty": 0.0, "seed": 7, "temperature": 0.0,
        "exclude_input_in_output": True, "return_num_input_tokens": True, "return_num_output_tokens": True,
        "return_logprobs": True,
    }  # fmt: skip
    result = grpc_stream(triton_server.grpc_url, values)
    assert result.error is None and result.num_output_tokens == 6 and result.num_input_tokens
    assert result.finish_reason == "length" and result.text
