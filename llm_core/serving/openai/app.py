"""The FastAPI application: routes, OpenAI-style error handlers, streaming and disconnects.

A client that goes away cancels its Triton request: streamed answers through Starlette cancelling
the response body (our generator's `finally` closes the gRPC stream), non-streamed ones through a
poll of `request.is_disconnected()` while the answer is collected.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from llm_core.serving.openai.chat import ChatRenderer
from llm_core.serving.openai.embeddings import create_embeddings
from llm_core.serving.openai.errors import OpenAIError
from llm_core.serving.openai.mapping import Generation, chat_generation, completion_generation
from llm_core.serving.openai.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from llm_core.serving.openai.results import Delta, ResponseBuilder, Totals

DISCONNECT_POLL_S = 0.25


class Backend(Protocol):
    def generate(self, generation: Generation, request_id: str) -> AsyncIterator[Delta]: ...
    async def is_ready(self) -> bool: ...
    async def has_model(self, name: str) -> bool: ...
    async def close(self) -> None: ...


@dataclass
class ServerState:
    backend: Backend
    tokenizer: Any
    renderer: ChatRenderer
    model_name: str
    default_max_tokens: int | None = None
    created: int = 0
    aliases: tuple[str, ...] = ()  # other accepted `model` values (the Triton model's name)

    def check_model(self, name: str) -> None:
        if name != self.model_name and name not in self.aliases:
            raise OpenAIError(404, f"The model `{name}` does not exist (served: `{self.model_name}`).", "model",
                              "model_not_found")  # fmt: skip


def _event(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


async def _sse(builder: ResponseBuilder, first: Delta, deltas: AsyncIterator[Delta], usage: bool) -> AsyncIterator[str]:
    totals, delta, is_first = Totals(), first, True
    try:
        while True:
            totals.add(delta)
            yield _event(builder.chunk(delta, is_first, usage))
            if delta.finish_reason is not None:
                break
            delta, is_first = await anext(deltas), False
        if usage:
            yield _event(builder.usage_chunk(totals))
    except OpenAIError as exc:
        yield _event(exc.body())
    except StopAsyncIteration:
        yield _event(OpenAIError(500, "the Triton stream ended without a finish_reason").body())
    finally:
        await deltas.aclose()  # no-op when finished; else cancels the Triton request (KV freed)
    yield "data: [DONE]\n\n"


async def _collect(deltas: AsyncIterator[Delta]) -> Totals:
    totals = Totals()
    async for delta in deltas:
        totals.add(delta)
    return totals


async def _collect_unless_disconnected(request: Request, deltas: AsyncIterator[Delta]) -> Totals | None:
    task = asyncio.ensure_future(_collect(deltas))
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            return None


async def _respond(request: Request, state: ServerState, kind: str, body: SamplingFields, gen: Generation) -> Response:
    request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
    builder = ResponseBuilder(kind, request_id, state.model_name, state.tokenizer, gen.logprobs)
    deltas = state.backend.generate(gen, request_id)
    if body.stream:
        try:
            first = await anext(deltas)  # an error before the first token is a plain HTTP error
        except StopAsyncIteration:
            raise OpenAIError(500, "the Triton stream ended without a response") from None
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(builder, first, deltas, usage), media_type="text/event-stream")
    totals = await _collect_unless_disconnected(request, deltas)
    if totals is None:
        return Response(status_code=499)  # client closed the request; nobody reads this
    return JSONResponse(builder.full(totals))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def openai_error(_request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return JSONResponse(OpenAIError(400, message, param).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(OpenAIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)


def _state(request: Request) -> ServerState:
    return request.app.state.openai


def create_app(make_state: Callable[[], ServerState]) -> FastAPI:
    """`make_state` runs at startup, inside the server's event loop (the gRPC aio channel binds to it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.openai = make_state()
        yield
        await app.state.openai.backend.close()

    app = FastAPI(title="llm_core OpenAI-compatible API", lifespan=lifespan)
    _install_error_handlers(app)

    @app.get("/health")
    async def health(request: Request) -> Response:
        return Response(status_code=200 if await _state(request).backend.is_ready() else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        state = _state(request)
        card = {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "llm_core"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        state = _state(request)
        state.check_model(body.model)
        return await _respond(request, state, "completion", body, completion_generation(body, state.default_max_tokens))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        state = _state(request)
        state.check_model(body.model)
        extra = dict(body.chat_template_kwargs or {})
        if body.continue_final_message:
            extra["continue_final_message"] = True
        prompt = state.renderer.render(body.messages, body.add_generation_prompt, **extra)
        return await _respond(request, state, "chat", body, chat_generation(body, prompt, state.default_max_tokens))

    @app.post("/v1/embeddings")
    async def embeddings(body: dict[str, Any], request: Request) -> dict[str, Any]:
        state = _state(request)
        return await create_embeddings(state.backend, body, state.model_name)

    return app
