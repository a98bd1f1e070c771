"""Locust load test: a gRPC-streaming user and an HTTP-SSE user against the ensemble.

    locust -f clients/locustfile.py --headless -u 8 -r 4 -t 30s --host http://localhost:8000

`--host` is the HTTP address; the gRPC user connects to the same host on TRITON_GRPC_PORT
(default 8001), or to TRITON_GRPC_URL (host:port) when set. Other settings: TRITON_MODEL
(default ensemble), LOCUST_MAX_TOKENS (default 32), LOCUST_IMAGE (an image file: every request
then carries it). Each request reports three entries:
  type grpc_stream / http_sse, name generate: whole request, in ms (length = output tokens);
  type TTFT, name grpc_stream / http_sse: time to first token, in ms;
  type tokens/s, name grpc_stream / http_sse: output tokens per second (the "ms" columns hold tokens/s).
Every request sets min_tokens = max_tokens, so it must end with finish_reason "length" after
exactly LOCUST_MAX_TOKENS tokens; anything else, or any error, is a failure.
"""

from __future__ import annotations

import os
import random
import time
from urllib.parse import urlsplit

import grpc.experimental.gevent
from common import GenerateRequest, RequestTimer, encode_image, grpc_inputs
from grpc_stream import GrpcStreamer
from http_sse import stream_sse
from locust import User, between, task

grpc.experimental.gevent.init_gevent()  # grpc's own threads must yield to Locust's greenlets

MODEL = os.environ.get("TRITON_MODEL", "ensemble")
MAX_TOKENS = int(os.environ.get("LOCUST_MAX_TOKENS", "32"))
IMAGE = os.environ.get("LOCUST_IMAGE")
PROMPTS = (
    "Write a short poem about the sea.",
    "Explain continuous batching in one paragraph.",
    "List three uses of a paperclip.",
    "Translate 'good morning' into French, German and Japanese.",
    "What is the capital of Australia?",
)


def random_request() -> GenerateRequest:
    prompt = random.choice(PROMPTS)
    images = (encode_image(IMAGE),) if IMAGE else ()
    prompt = ("<image>\n" + prompt) if IMAGE else prompt
    return GenerateRequest(prompt, max_tokens=MAX_TOKENS, images=images, sampling={"min_tokens": MAX_TOKENS})


class GenerationUser(User):
    """Runs one generation per task and reports it; subclasses say how."""

    abstract = True
    wait_time = between(0.1, 0.5)
    kind = ""

    def generate(self, req: GenerateRequest) -> RequestTimer:
        raise NotImplementedError

    @task
    def stream_one(self) -> None:
        start = time.perf_counter()
        try:
            timer = self.generate(random_request())
            if timer.finish_reason != "length" or timer.num_output_tokens != MAX_TOKENS:
                raise RuntimeError(f"finish_reason={timer.finish_reason!r} after {timer.num_output_tokens} tokens")
        except Exception as exc:  # every error is a Locust failure; repr() of some lacks the message
            failure = RuntimeError(f"{type(exc).__name__}: {exc}")
            self.report(self.kind, "generate", (time.perf_counter() - start) * 1e3, 0, failure)
            return
        self.report(self.kind, "generate", timer.latency * 1e3, timer.num_output_tokens)
        self.report("TTFT", self.kind, timer.ttft * 1e3)
        self.report("tokens/s", self.kind, timer.tokens_per_s)

    def report(self, request_type: str, name: str, value: float, length: int = 0, exc=None) -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=value, response_length=length, exception=exc, context={}
        )


class GrpcStreamUser(GenerationUser):
    kind = "grpc_stream"

    def on_start(self) -> None:
        # One client per user for the whole run: under gevent, a grpc channel garbage-collected
        # while another greenlet is inside grpc can deadlock (its __del__ closes it again).
        url = os.environ.get("TRITON_GRPC_URL")
        url = url or f"{urlsplit(self.host).hostname}:{os.environ.get('TRITON_GRPC_PORT', '8001')}"
        self.streamer = GrpcStreamer(url, timeout_s=60.0)

    def on_stop(self) -> None:
        self.streamer.close()

    def generate(self, req: GenerateRequest) -> RequestTimer:
        try:
            return self.streamer.generate(MODEL, grpc_inputs(req))
        except Exception:
            self.streamer.restart()  # the stream may be broken: the next task gets a fresh one
            raise


class HttpSseUser(GenerationUser):
    kind = "http_sse"

    def generate(self, req: GenerateRequest) -> RequestTimer:
        return stream_sse(self.host, MODEL, req, timeout_s=60.0)
