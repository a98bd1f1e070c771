"""gRPC calls of the fleet client (tritonclient.grpc): the chat ensemble over a bidirectional stream, the
embedding model over unary infer. One client per server and calling thread, kept open, so latency probes
and requests reuse connections and concurrent callers never share a stream."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from llm_core.serving.triton_inputs import infer_inputs


class TransportError(RuntimeError):
    """The server failed the request or could not be reached."""


class _Stream:
    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def close(self) -> None:
        try:
            self.client.stop_stream(cancel_requests=True)
            self.client.close()
        except Exception:  # noqa: BLE001 - a dead server's channel may fail to close
            pass


class GrpcTransport:
    def __init__(self) -> None:
        self._local = threading.local()

    def _clients(self) -> dict[str, _Stream]:
        if not hasattr(self._local, "clients"):
            self._local.clients = {}
        return self._local.clients

    def _stream(self, url: str) -> _Stream:
        clients = self._clients()
        if url not in clients:
            clients[url] = _Stream(url)
        return clients[url]

    def _drop(self, url: str) -> None:
        stream = self._clients().pop(url, None)
        if stream is not None:
            stream.close()

    def generate(self, url: str, prompt: str, max_tokens: int, timeout: float) -> Iterator[str]:
        """The text pieces of one streamed completion; TransportError / TimeoutError on failure."""
        inputs = _inputs(
            text_input=np.array([[prompt.encode()]], np.object_), max_tokens=np.array([[max_tokens]], np.int32),
            stream=np.array([[True]], np.bool_),
        )  # fmt: skip
        try:
            stream = self._stream(url)
            stream.client.async_stream_infer("ensemble", inputs, enable_empty_final_response=True)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises several kinds
            self._drop(url)
            raise TransportError(f"{url}: {exc}") from exc
        finished = False
        try:
            while not finished:
                try:
                    result, error = stream.responses.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"{url}: no response within {timeout:.2f} s") from None
                if error is not None:
                    raise TransportError(f"{url}: {error}")
                params = result.get_response().parameters
                finished = "triton_final_response" in params and params["triton_final_response"].bool_param
                text = result.as_numpy("text_output")
                if text is not None and text.size:
                    yield b"".join(text.reshape(-1)).decode("utf-8", errors="replace")
        finally:
            if not finished:  # failed, timed out, or closed by the caller: cancel it with its stream
                self._drop(url)

    def embed(self, url: str, texts: list[str], timeout: float) -> np.ndarray:
        inputs = _inputs(text_input=np.array([[t.encode()] for t in texts], np.object_))
        try:
            result = self._stream(url).client.infer("embedding", inputs, client_timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            self._drop(url)
            if "Deadline" in str(exc):
                raise TimeoutError(f"{url}: no response within {timeout:.2f} s") from exc
            raise TransportError(f"{url}: {exc}") from exc
        return result.as_numpy("embedding")

    def close(self) -> None:
        for url in list(self._clients()):
            self._drop(url)


def _inputs(**arrays: np.ndarray) -> list:
    return infer_inputs(arrays)
