"""OpenAI request mapping, chat templates, error classification (llm_core.serving.openai), no server."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from llm_core.serving.openai.chat import ChatRenderer
from llm_core.serving.openai.errors import OpenAIError, from_triton
from llm_core.serving.openai.mapping import chat_generation, completion_generation
from llm_core.serving.openai.protocol import ChatCompletionRequest, CompletionRequest
from llm_core.serving.openai.results import Delta, ResponseBuilder, Totals

PNG_URI = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture(scope="module")
def tokenizer(tiny_llava):
    return AutoTokenizer.from_pretrained(str(tiny_llava))


def _completion(**fields) -> CompletionRequest:
    return CompletionRequest(model="m", prompt=fields.pop("prompt", "Hello"), **fields)


def _chat(messages=None, **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=messages or [{"role": "user", "content": "Hi"}], **fields)


def test_completion_fields_map_to_sampling_parameters():
    gen = completion_generation(
        _completion(max_tokens=7, temperature=0.5, stop="END", seed=3, top_k=4, min_tokens=2, ignore_eos=True,
                    repetition_penalty=1.1, logprobs=0, echo=True),
        default_max_tokens=None,
    )  # fmt: skip
    sampling = dict(gen.sampling)
    assert sampling == {"temperature": 0.5, "seed": 3, "top_k": 4, "min_tokens": 2, "ignore_eos": True,
                        "repetition_penalty": 1.1, "max_tokens": 7, "stop": ["END"]}  # fmt: skip
    assert gen.logprobs and gen.echo and gen.prompt == "Hello"
    inputs = gen.ensemble_inputs()
    assert json.loads(inputs["sampling_parameters"][0, 0]) == sampling
    assert inputs["stream"].tolist() == [[True]]  # always streamed from Triton: cancellable
    assert inputs["exclude_input_in_output"].tolist() == [[False]] and inputs["return_log_probs"].tolist() == [[True]]
    assert "image" not in inputs


def test_defaults_and_max_completion_tokens():
    assert "max_tokens" not in dict(completion_generation(_completion(), None).sampling)
    assert dict(completion_generation(_completion(), 64).sampling)["max_tokens"] == 64
    gen = chat_generation(_chat(max_tokens=5, max_completion_tokens=9), _prompt(), None)
    assert dict(gen.sampling)["max_tokens"] == 9


def _prompt(text="p", images=()):
    from llm_core.serving.openai.chat import ChatPrompt

    return ChatPrompt(text, images)


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"logprobs": 2}, "logprobs"),
        ({"suffix": "x"}, "suffix"),
        ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
    ],
)
def test_completion_refuses_what_it_cannot_do(fields, param):
    with pytest.raises(OpenAIError) as info:
        completion_generation(_completion(**fields), None)
    assert info.value.status == 400 and info.value.param == param, info.value


@pytest.mark.parametrize(
    "fields,param",
    [({"n": 3}, "n"), ({"top_logprobs": 2, "logprobs": True}, "top_logprobs"),
     ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
     ({"response_format": {"type": "json_object"}}, "response_format")],
)  # fmt: skip
def test_chat_refuses_what_it_cannot_do(fields, param):
    with pytest.raises(OpenAIError) as info:
        chat_generation(_chat(**fields), _prompt(), None)
    assert info.value.status == 400 and info.value.param == param


def test_chat_template_renders_without_a_double_bos(tokenizer, tiny_llava):
    renderer = ChatRenderer(tokenizer, str(tiny_llava), accepts_images=True)
    prompt = renderer.render(
        _chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]).messages
    )
    assert not prompt.text.startswith(tokenizer.bos_token)  # the ensemble's tokenizer adds it
    assert prompt.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") and "Be brief." in prompt.text
    ids = tokenizer(prompt.text).input_ids
    assert ids.count(tokenizer.bos_token_id) == 1


def test_image_parts_become_image_tags_in_order(tokenizer, tiny_llava):
    renderer = ChatRenderer(tokenizer, str(tiny_llava), accepts_images=True)
    content = [{"type": "image_url", "image_url": {"url": PNG_URI}}, {"type": "text", "text": "What is it?"},
               {"type": "image_url", "image_url": {"url": PNG_URI + "A"}}]  # fmt: skip
    prompt = renderer.render(_chat([{"role": "user", "content": content}]).messages)
    assert "<image>\nWhat is it?\n<image>" in prompt.text and prompt.images == (PNG_URI, PNG_URI + "A")
    gen = chat_generation(_chat(), prompt, None)
    assert gen.ensemble_inputs()["image"].shape == (1, 2)


def test_image_errors(tokenizer, tiny_llava):
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(OpenAIError, match="only data: URIs"):
        ChatRenderer(tokenizer, str(tiny_llava), True).render(_chat([{"role": "user", "content": remote}]).messages)
    local = [{"type": "image_url", "image_url": {"url": PNG_URI}}]
    with pytest.raises(OpenAIError, match="does not take images"):
        ChatRenderer(tokenizer, str(tiny_llava), False).render(_chat([{"role": "user", "content": local}]).messages)


def test_no_chat_template_is_a_clear_error_and_the_flag_fixes_it(tokenizer, tiny_llava):
    class NoTemplate:
        chat_template = None
        bos_token = None

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    with pytest.raises(OpenAIError, match="no chat template.*--chat-template") as info:
        ChatRenderer(NoTemplate(), "/models/x", False).render(_chat().messages)
    assert info.value.status == 400
    renderer = ChatRenderer(
        NoTemplate(), "/models/x", False, template="{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    )
    assert renderer.render(_chat().messages).text == "[Hi]"


@pytest.mark.parametrize(
    "message,status,param",
    [
        ("in ensemble 'ensemble', max_tokens: must be >= 1, got 0", 400, "max_tokens"),
        ("in ensemble 'ensemble', <image>: 2 tags but 1 image", 400, "<image>"),
        ("in ensemble 'ensemble', image[0]: not an image", 400, "image[0]"),
        ("in ensemble 'ensemble', engine failure: worker died", 503, None),
        ("engine is restarting", 503, None),
        ("in ensemble 'ensemble', Stub process 'llm_0_0' is not healthy.", 503, None),
        ("the embedding model is not enabled on this server", 503, None),
        ("something odd", 500, None),
    ],
)
def test_triton_errors_are_classified(message, status, param):
    error = from_triton(message)
    assert (error.status, error.param) == (status, param)
    types = {400: "invalid_request_error", 503: "service_unavailable_error", 500: "server_error"}
    assert error.body()["error"]["type"] == types[status]
    # An unavailable engine tells the client to come back, whichever layer noticed; a disabled part does not.
    retry = status == 503 and "not enabled" not in message
    assert ("retry" in error.message) == retry and ("Retry-After" in error.headers()) == retry


def test_results_usage_and_logprobs(tokenizer):
    ids = tokenizer("Hello world").input_ids[1:]
    totals = Totals()
    totals.add(Delta("Hello", 1, 4, None, (ids[0],), (-0.5,)))
    totals.add(Delta(" world", 1, 4, "length", (ids[1],), (-1.0,)))
    chat = ResponseBuilder("chat", "id", "m", tokenizer, True).full(totals)
    assert chat["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert chat["choices"][0]["message"]["content"] == "Hello world" and chat["choices"][0]["finish_reason"] == "length"
    tokens = [tokenizer.decode([i]) for i in ids[:2]]
    assert [c["token"] for c in chat["choices"][0]["logprobs"]["content"]] == tokens
    text = ResponseBuilder("completion", "id", "m", tokenizer, True).full(totals)["choices"][0]
    assert text["logprobs"]["token_logprobs"] == [-0.5, -1.0] and text["logprobs"]["text_offset"] == [0, len(tokens[0])]
    chunk = ResponseBuilder("chat", "id", "m", tokenizer, False).chunk(Delta("Hi"), True, include_usage=True)
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"} and chunk["usage"] is None
