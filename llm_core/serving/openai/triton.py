"""The ensemble over tritonclient's asyncio gRPC client: one bidirectional stream per request.

Requests always run with `stream=true` at Triton (one response per engine step), whether or not
the OpenAI client streams: that is what lets a client that goes away cancel the request inside the
ensemble (the postprocess step relays the cancellation to the engine, which frees the KV slots),
which a `stream=false` ensemble request cannot (docs/SERVING.md). The last response is the one
with a finish_reason (the aio client cannot ask for Triton's empty final response: the
`triton_` parameter prefix is reserved there).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from llm_core.serving.openai.errors import OpenAIError, from_triton
from llm_core.serving.openai.mapping import Generation
from llm_core.serving.openai.results import Delta
from llm_core.serving.triton_inputs import infer_inputs


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


class TritonBackend:
    def __init__(self, url: str, model: str = "ensemble") -> None:
        self.url = url
        self.model = model
        self.client = grpcclient.InferenceServerClient(url)

    async def close(self) -> None:
        await self.client.close()

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
        except InferenceServerException as exc:
            raise OpenAIError(503, f"Triton at {self.url}: {exc.message()}") from None
        except grpc.RpcError as exc:
            raise OpenAIError(503, f"Triton at {self.url}: {exc.details() or exc}") from None
        finally:
            done.set()
            if not finished:
                responses.cancel()
