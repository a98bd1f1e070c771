"""The OpenAI app with a scripted backend, driven by the official `openai` client (no Triton)."""

from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from llm_core.serving.openai.app import ServerState, create_app
from llm_core.serving.openai.chat import ChatRenderer
from llm_core.serving.openai.errors import from_triton
from llm_core.serving.openai.results import Delta

WORDS = ("Hel", "lo", " there", "!")


class ScriptedBackend:
    """Answers every prompt with WORDS (cut at max_tokens); a prompt starting "ERR" fails in Triton, one starting
    "DOWN" meets a dead llm stub."""

    def __init__(self) -> None:
        self.generations = []

    async def generate(self, generation, request_id):
        self.generations.append(generation)
        if generation.prompt.startswith("ERR"):
            raise from_triton("in ensemble 'ensemble', text_input: prompt is too long")
        if generation.prompt.startswith("DOWN"):  # what tritonserver answers while the llm stub is dead
            raise from_triton("in ensemble 'ensemble', Stub process 'llm_0_0' is not healthy.")
        max_tokens = dict(generation.sampling).get("max_tokens", 16)
        words = WORDS[:max_tokens]
        for i, word in enumerate(words):
            reason = None if i < len(words) - 1 else ("length" if max_tokens <= len(WORDS) else "stop")
            yield Delta(
                word, 1, 7, reason, (100 + i,) if generation.logprobs else (), (-0.25,) if generation.logprobs else ()
            )
            await asyncio.sleep(0)

    async def is_ready(self) -> bool:
        return True

    async def has_model(self, name: str) -> bool:
        return False

    async def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def backend():
    return ScriptedBackend()


@pytest.fixture(scope="module")
def client(tiny_llava, backend):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llava))
    renderer = ChatRenderer(tokenizer, str(tiny_llava), accepts_images=True)
    app = create_app(lambda: ServerState(backend, tokenizer, renderer, "tiny", None, 1))
    with TestClient(app) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_usage_and_finish_reason(client):
    out = client.completions.create(model="tiny", prompt="Hi", max_tokens=2)
    assert out.choices[0].text == "Hello" and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (7, 2, 9)
    out = client.completions.create(model="tiny", prompt="Hi", max_tokens=10, logprobs=0)
    assert out.choices[0].text == "".join(WORDS) and out.choices[0].finish_reason == "stop"
    assert out.choices[0].logprobs.token_logprobs == [-0.25] * 4


def test_streamed_completion_with_usage(client):
    stream = client.completions.create(
        model="tiny", prompt="Hi", max_tokens=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, "length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_streamed_and_not(client, backend):
    messages = [{"role": "user", "content": "Say hello"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=4, seed=5)
    assert out.choices[0].message.content == "".join(WORDS) and out.choices[0].message.role == "assistant"
    assert dict(backend.generations[-1].sampling)["seed"] == 5
    assert backend.generations[-1].prompt.endswith("assistant<|end_header_id|>\n\n")
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content for c in chunks) == "Hello" and chunks[-1].choices[0].finish_reason


def test_vllm_extension_fields_pass_through(client, backend):
    extra = {"top_k": 3, "min_tokens": 1, "ignore_eos": True, "repetition_penalty": 1.2}
    client.completions.create(model="tiny", prompt="Hi", max_tokens=2, extra_body=extra)
    assert {k: dict(backend.generations[-1].sampling)[k] for k in extra} == extra


@pytest.mark.parametrize(
    "call,status,param",
    [
        (lambda c: c.completions.create(model="tiny", prompt="Hi", n=2), 400, "n"),
        (lambda c: c.completions.create(model="tiny", prompt="Hi", temperature=-1), 400, "temperature"),
        (lambda c: c.completions.create(model="tiny", prompt="ERR"), 400, "text_input"),
        (lambda c: c.completions.create(model="tiny", prompt="ERR", stream=True), 400, "text_input"),
        (lambda c: c.completions.create(model="other", prompt="Hi"), 404, "model"),
        (lambda c: c.completions.create(model="tiny", prompt="Hi", extra_body={"top_k": "many"}), 400, "top_k"),
        (lambda c: c.embeddings.create(model="tiny", input="Hi"), 404, "model"),
    ],
    ids=["n", "temperature", "triton-error", "triton-error-stream", "model", "validation", "embeddings"],
)
def test_errors_in_openai_format(client, call, status, param):
    with pytest.raises(openai.APIStatusError) as info:
        call(client)
    assert info.value.status_code == status
    assert info.value.body["param"] == param and info.value.body["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_dead_stub_answers_503_with_a_retry_hint(client, stream):
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(model="tiny", prompt="DOWN", stream=stream)
    assert info.value.status_code == 503 and info.value.response.headers["Retry-After"] == "5"
    assert info.value.body["type"] == "service_unavailable_error" and "retry" in info.value.body["message"]


class EmbeddingBackend(ScriptedBackend):
    """Has an `embedding` model: text i -> a vector of len(text) repeated; "OFF" answers as a disabled model."""

    async def has_model(self, name: str) -> bool:
        return name == "embedding"

    async def embed(self, texts):
        if texts[0] == "OFF":
            raise from_triton("the embedding model is not enabled on this server (LLM_EMBEDDING=1)")
        return np.array([[float(len(t))] * 3 for t in texts], dtype=np.float32)


def test_embeddings_over_the_embedding_model(tiny_llava):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llava))
    renderer = ChatRenderer(tokenizer, str(tiny_llava), accepts_images=True)
    app = create_app(lambda: ServerState(EmbeddingBackend(), tokenizer, renderer, "tiny", None, 1))
    with TestClient(app) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)
        out = client.embeddings.create(model="tiny", input=["ab", "abcd"], encoding_format="float")
        assert [d.index for d in out.data] == [0, 1] and out.data[1].embedding == [4.0, 4.0, 4.0]
        packed = client.embeddings.create(model="tiny", input=["ab", "abcd"])  # the client's default: base64
        assert packed.data[1].embedding == [4.0, 4.0, 4.0]
        assert out.model == "tiny" and out.object == "list"
        assert (
            client.embeddings.create(model="tiny", input="xyz", encoding_format="float").data[0].embedding == [3.0] * 3
        )
        for kwargs, status, param in [
            ({"input": "OFF"}, 503, None),
            ({"input": [1, 2, 3]}, 400, "input"),
            ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ]:
            with pytest.raises(openai.APIStatusError) as info:
                client.embeddings.create(model="tiny", **kwargs)
            assert info.value.status_code == status and info.value.body.get("param") == param
