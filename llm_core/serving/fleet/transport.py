"""gRPC calls of the fleet client (tritonclient.grpc): the chat ensemble over a bidirectional stream, the
embedding model over unary infer.

Each server's clients (gRPC channels) are kept open in a pool, so latency probes and requests reuse
connections; a request takes one for itself (concurrent callers never share a stream) and gives it back.
A chat request opens its own stream on it and closes that stream once the final response is in: a stream
left open keeps tritonserver from shutting down (its ensemble stays "live" through the whole exit timeout,
then the gRPC server waits for the stream), so a long-lived client would stall every server it talked to.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np

from llm_core.serving.triton_inputs import infer_inputs


class TransportError(RuntimeError):
    """The server failed the request or could not be reached."""


def _close(client, cancel: bool = True) -> None:
    try:
        client.stop_stream(cancel_requests=cancel)
        client.close()
    except Exception:  # noqa: BLE001 - a dead server's channel may fail to close
        pass


class GrpcTransport:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list] = {}  # url -> open clients no request is using

    def _take(self, url: str):
        with self._lock:
            idle = self._idle.get(url)
            if idle:
                return idle.pop()
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(url)

    def _give_back(self, url: str, client) -> None:
        with self._lock:
            self._idle.setdefault(url, []).append(client)

    def generate(self, url: str, prompt: str, max_tokens: int, timeout: float) -> Iterator[str]:
        """The text pieces of one streamed completion; TransportError / TimeoutError on failure."""
        inputs = _inputs(
            text_input=np.array([[prompt.encode()]], np.object_), max_tokens=np.array([[max_tokens]], np.int32),
            stream=np.array([[True]], np.bool_),
        )  # fmt: skip
        responses: queue.Queue = queue.Queue()
        client = None
        try:
            client = self._take(url)
            client.start_stream(callback=lambda result, error: responses.put((result, error)))
            client.async_stream_infer("ensemble", inputs, enable_empty_final_response=True)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises several kinds
            if client is not None:
                _close(client)
            raise TransportError(f"{url}: {exc}") from exc
        finished = False
        try:
            while not finished:
                try:
                    result, error = responses.get(timeout=timeout)
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
            if finished:  # the server is done with it: end the stream, keep the channel
                try:
                    client.stop_stream()
                except Exception:  # noqa: BLE001
                    _close(client)
                else:
                    self._give_back(url, client)
            else:  # failed, timed out, or closed by the caller: cancel it with its channel
                _close(client)

    def embed(self, url: str, texts: list[str], timeout: float) -> np.ndarray:
        inputs = _inputs(text_input=np.array([[t.encode()] for t in texts], np.object_))
        client = None
        try:
            client = self._take(url)
            result = client.infer("embedding", inputs, client_timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            if client is not None:
                _close(client)
            if "Deadline" in str(exc):
                raise TimeoutError(f"{url}: no response within {timeout:.2f} s") from exc
            raise TransportError(f"{url}: {exc}") from exc
        self._give_back(url, client)
        return result.as_numpy("embedding")

    def close(self) -> None:
        """Close every idle client (one a request still uses is closed when that request ends or fails)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for clients in idle.values():
            for client in clients:
                _close(client)


def _inputs(**arrays: np.ndarray) -> list:
    return infer_inputs(arrays)
