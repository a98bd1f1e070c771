"""The ensemble over tritonclient's asyncio gRPC client: one bidirectional stream per request.

Requests always run with `stream=true` at Triton (one response per engine step), whether or not
the OpenAI client streams: that is what lets a client that goes away cancel the request inside the
ensemble (the postprocess step relays the cancellation to the engine, which frees the KV slots),
which a `stream=false` ensemble request cannot (docs/SERVING.md). The last response is the one
with a finish_reason (the aio client cannot ask for Triton's empty final response: the
`triton_` parameter prefix is reserved there).

A request held by a Python stub that dies is never answered by tritonserver 2.51 (no fail-over for
decoupled models). From its first request on, the backend reads the repository index once a second; when the
supervisor's sentinel says a stub died (`supervisor.STUB_DIED`), every request that was running then ends
with a 503 and a retry hint instead of waiting forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from llm_core.serving.openai.errors import from_triton, unavailable
from llm_core.serving.openai.mapping import Generation
from llm_core.serving.openai.results import Delta
from llm_core.serving.supervisor import SENTINEL, STUB_DIED
from llm_core.serving.triton_inputs import infer_inputs

STUB_WATCH_S = 1.0
LOST = (
    "the server's llm step died while this request ran and tritonserver does not answer such requests; "
    "the server is reloading it: retry"
)


def _first(result: Any, name: str) -> Any:
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    return array.reshape(-1)[0]


def parse_result(result: Any) -> Delta:
    """One ensemble response (tritonclient InferResult) -> Delta."""
    text = result.as_numpy("text_output")
    reason = _first(result, "finish_reason")
    num_input = _first(result, "num_input_tokens")
    num_output = _first(result, "num_output_tokens")
    ids = result.as_numpy("output_ids")
    logprobs = result.as_numpy("output_log_probs")
    return Delta(
        text=b"".join(text.reshape(-1)).decode("utf-8") if text is not None else "",
        num_output_tokens=int(num_output) if num_output is not None else 0,
        num_input_tokens=int(num_input) if num_input is not None else None,
        finish_reason=reason.decode() if reason is not None else None,
        token_ids=tuple(int(t) for t in ids.reshape(-1)) if ids is not None else (),
        logprobs=tuple(float(v) for v in logprobs.reshape(-1)) if logprobs is not None else (),
    )


class _Running:
    """A generate call in flight: its response stream, and whether the stub watch gave it up."""

    __slots__ = ("responses", "lost")

    def __init__(self, responses: Any) -> None:
        self.responses = responses
        self.lost = False


class TritonBackend:
    def __init__(self, url: str, model: str = "ensemble", stub_watch_s: float = STUB_WATCH_S) -> None:
        self.url = url
        self.model = model
        self.client = grpcclient.InferenceServerClient(url)
        self.stub_watch_s = stub_watch_s
        self._running: set[_Running] = set()
        self._watch: asyncio.Task | None = None

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.client.close()

    async def stub_died(self) -> bool:
        """The supervisor's sentinel says a model reloads because its stub died."""
        try:
            index = await self.client.get_model_repository_index(as_json=True)
        except InferenceServerException:
            return False
        return any(m.get("name") == SENTINEL and STUB_DIED in m.get("reason", "") for m in index.get("models", []))

    async def _watch_stubs(self) -> None:
        """From the first request on: when a stub is seen to have died, every request running then is lost with
        it (see the module doc); those sent while it reloads are answered by Triton itself."""
        seen = False
        while True:
            await asyncio.sleep(self.stub_watch_s)
            died = await self.stub_died()
            if died and not seen:
                for running in list(self._running):
                    running.lost = True
                    running.responses.cancel()
            seen = died

    async def is_ready(self) -> bool:
        try:
            return bool(await self.client.is_server_ready()) and bool(await self.client.is_model_ready(self.model))
        except InferenceServerException:
            return False

    async def has_model(self, name: str) -> bool:
        try:
            index = await self.client.get_model_repository_index(as_json=True)
        except InferenceServerException:
            return False
        return any(m.get("name") == name for m in index.get("models", []))

    async def embed(self, texts: list[str]) -> np.ndarray:
        """[n, hidden] fp32 pooled vectors from the `embedding` model (one non-decoupled request)."""
        array = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        try:
            result = await self.client.infer(
                "embedding",
                infer_inputs({"text_input": array}),
                outputs=[grpcclient.InferRequestedOutput("embedding")],
            )
        except InferenceServerException as exc:
            raise from_triton(exc.message() or str(exc)) from None
        return result.as_numpy("embedding").astype(np.float32, copy=False)

    async def generate(self, generation: Generation, request_id: str) -> AsyncIterator[Delta]:
        """Deltas until the one with a finish_reason. Raises OpenAIError on a Triton error; closing
        the iterator early (client gone) cancels the gRPC call, so Triton cancels the request."""
        done = asyncio.Event()
        request = {
            "model_name": self.model,
            "inputs": infer_inputs(generation.ensemble_inputs()),
            "request_id": request_id,
        }

        async def requests() -> AsyncIterator[dict]:
            yield request
            await done.wait()  # keep our side open until the last response: then half-close

        responses = self.client.stream_infer(requests())
        running = _Running(responses)
        self._running.add(running)
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._watch_stubs())
        finished = False
        try:
            async for result, error in responses:
                if error is not None:
                    finished = True
                    raise from_triton(error.message())
                delta = parse_result(result)
                finished = delta.finish_reason is not None
                yield delta
                if finished:
                    return
            if running.lost:
                raise unavailable(LOST)
        except InferenceServerException as exc:
            raise unavailable(f"Triton at {self.url}: {exc.message()}") from None
        except grpc.RpcError as exc:
            raise unavailable(f"Triton at {self.url}: {exc.details() or exc}") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if running.lost and not (task and task.cancelling()):  # the stub watch cancelled the call, not our caller
                raise unavailable(LOST) from None
            raise
        finally:
            self._running.discard(running)
            done.set()
            if not finished:
                responses.cancel()
