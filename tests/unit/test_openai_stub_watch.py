"""The OpenAI backend's stub watch: tritonserver 2.51 never answers the requests a dead Python stub held, so
when the supervisor's sentinel says a stub died, every generate call running then ends with a 503 and a retry
hint; calls that started later, and a server without that state, are left alone."""

from __future__ import annotations

import asyncio

import pytest

from llm_core.serving.openai import triton as backend_module
from llm_core.serving.openai.errors import OpenAIError
from llm_core.serving.openai.mapping import Generation
from llm_core.serving.supervisor import SENTINEL, STUB_DIED


class _Stream:
    """A response stream that never answers until cancelled (a request held by a dead stub)."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self.cancelled.wait()
        raise asyncio.CancelledError

    def cancel(self) -> bool:
        self.cancelled.set()
        return True


class _Client:
    def __init__(self) -> None:
        self.reason = ""
        self.streams: list[_Stream] = []

    async def get_model_repository_index(self, as_json: bool = False) -> dict:
        return {"models": [{"name": "ensemble", "state": "READY"}, {"name": SENTINEL, "reason": self.reason}]}

    def stream_infer(self, requests) -> _Stream:
        self.streams.append(_Stream())
        return self.streams[-1]

    async def close(self) -> None:
        pass


def _backend() -> tuple[backend_module.TritonBackend, _Client]:
    backend = backend_module.TritonBackend.__new__(backend_module.TritonBackend)
    client = _Client()
    backend.url, backend.model, backend.client, backend.stub_watch_s = "fake", "ensemble", client, 0.01
    backend._running, backend._watch = set(), None
    return backend, client


async def _next(backend) -> None:
    gen = Generation(prompt="hi")
    async for _ in backend.generate(gen, "r"):
        pass


def test_a_dead_stub_ends_the_requests_it_held_with_a_retryable_error():
    async def scenario():
        backend, client = _backend()
        held = [asyncio.create_task(_next(backend)) for _ in range(3)]
        await asyncio.sleep(0.05)  # the watch polls with nothing wrong: the calls keep waiting
        assert not any(t.done() for t in held)
        client.reason = f"not ready: reloading llm ({STUB_DIED})"
        results = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 2)
        assert all(isinstance(r, OpenAIError) and r.status == 503 and "retry" in r.message for r in results)
        # Still reloading: a call started now is not taken (Triton answers it itself).
        later = asyncio.create_task(_next(backend))
        await asyncio.sleep(0.05)
        assert not later.done()
        later.cancel()
        await asyncio.gather(later, return_exceptions=True)
        await backend.close()

    asyncio.run(scenario())


def test_a_caller_cancelling_its_call_still_cancels_it():
    async def scenario():
        backend, client = _backend()
        call = asyncio.create_task(_next(backend))
        await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert client.streams[0].cancelled.is_set() and not backend._running
        await backend.close()

    asyncio.run(scenario())
