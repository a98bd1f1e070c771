"""Shared by every client: a request as the ensemble's inputs (gRPC tensors or the HTTP
`generate` JSON body), the parsing of its responses, and per-request timing.

The ensemble interface is docs/SERVING.md: the ensemble batches, so every gRPC input has shape
[1, n] (batch of one); the HTTP `generate` endpoint takes the same names as JSON fields.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_core.serving.triton_inputs import infer_inputs

# Optional sampling inputs of the ensemble and their tensor types.
SAMPLING_DTYPES: dict[str, type] = {
    "temperature": np.float32,
    "top_p": np.float32,
    "min_p": np.float32,
    "repetition_penalty": np.float32,
    "presence_penalty": np.float32,
    "frequency_penalty": np.float32,
    "top_k": np.int32,
    "min_tokens": np.int32,
    "seed": np.uint64,
}
# Asked for on every request so that clients can count tokens and see why generation ended.
RETURN_FLAGS = ("return_finish_reason", "return_num_input_tokens", "return_num_output_tokens")


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    prompt: str
    max_tokens: int | None = None  # None: the server's default
    stream: bool = True
    images: tuple[str, ...] = ()  # base64 of encoded image files, one per `<image>` tag
    sampling: dict[str, float | int] = field(default_factory=dict)  # keys of SAMPLING_DTYPES
    stop_words: tuple[str, ...] = ()
    sampling_parameters: str | None = None  # vLLM-style JSON, passed through as is

    def __post_init__(self) -> None:
        unknown = set(self.sampling) - set(SAMPLING_DTYPES)
        if unknown:
            raise ValueError(f"unknown sampling fields {sorted(unknown)}; known: {sorted(SAMPLING_DTYPES)}")


def encode_image(path: str | Path) -> str:
    """The file's bytes (any format the server decodes) as a base64 string."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def input_arrays(req: GenerateRequest) -> dict[str, np.ndarray]:
    """Ensemble input name -> array of shape [1, n] (batch of one)."""
    arrays = {"text_input": np.array([[req.prompt.encode("utf-8")]], dtype=np.object_)}
    if req.max_tokens is not None:
        arrays["max_tokens"] = np.array([[req.max_tokens]], dtype=np.int32)
    arrays["stream"] = np.array([[req.stream]], dtype=np.bool_)
    for name, value in req.sampling.items():
        arrays[name] = np.array([[value]], dtype=SAMPLING_DTYPES[name])
    if req.stop_words:
        arrays["stop_words"] = np.array([[w.encode("utf-8") for w in req.stop_words]], dtype=np.object_)
    if req.sampling_parameters is not None:
        arrays["sampling_parameters"] = np.array([[req.sampling_parameters.encode("utf-8")]], dtype=np.object_)
    if req.images:
        arrays["image"] = np.array([[img.encode("ascii") for img in req.images]], dtype=np.object_)
    for name in RETURN_FLAGS:
        arrays[name] = np.array([[True]], dtype=np.bool_)
    return arrays


def grpc_inputs(req: GenerateRequest) -> list:
    """The request as a list of tritonclient.grpc.InferInput for the ensemble."""
    return infer_inputs(input_arrays(req))


def http_body(req: GenerateRequest) -> dict:
    """The request as the JSON body of HTTP `generate` / `generate_stream`."""
    body: dict = {"text_input": req.prompt, "stream": req.stream}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    body.update(req.sampling)
    if req.stop_words:
        body["stop_words"] = list(req.stop_words)
    if req.sampling_parameters is not None:
        body["sampling_parameters"] = req.sampling_parameters
    if req.images:
        body["image"] = list(req.images)
    body.update({name: True for name in RETURN_FLAGS})
    return body


@dataclass(frozen=True, slots=True)
class Chunk:
    """One response of a stream (or the only one of a non-streaming request)."""

    text: str
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None  # tokens in this chunk
    final: bool = False  # the server's last response for the request (gRPC only)


def _first(value):
    """A JSON field or flattened tensor as one value: None when absent or empty."""
    if isinstance(value, list | tuple | np.ndarray):
        return value[0] if len(value) else None
    return value


def _as_str(value) -> str | None:
    value = _first(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return None if value is None or value == "" else str(value)


def _as_int(value) -> int | None:
    value = _first(value)
    return None if value is None else int(value)


def chunk_from_grpc(result) -> Chunk:
    """A tritonclient.grpc InferResult as a Chunk; outputs the server left out are None."""

    def flat(name: str):
        array = result.as_numpy(name)
        return None if array is None else array.reshape(-1)

    texts = flat("text_output")
    params = result.get_response().parameters
    return Chunk(
        text=b"".join(texts).decode("utf-8") if texts is not None else "",
        finish_reason=_as_str(flat("finish_reason")),
        num_input_tokens=_as_int(flat("num_input_tokens")),
        num_output_tokens=_as_int(flat("num_output_tokens")),
        final="triton_final_response" in params and params["triton_final_response"].bool_param,
    )


def chunk_from_json(obj: dict) -> Chunk:
    """One HTTP `generate` response or `generate_stream` event as a Chunk."""
    if "error" in obj:
        raise RuntimeError(f"server error: {obj['error']}")
    text = obj.get("text_output", "")
    return Chunk(
        text="".join(text) if isinstance(text, list) else str(text),
        finish_reason=_as_str(obj.get("finish_reason")),
        num_input_tokens=_as_int(obj.get("num_input_tokens")),
        num_output_tokens=_as_int(obj.get("num_output_tokens")),
    )


@dataclass(slots=True)
class RequestTimer:
    """Arrival time and token count of each non-empty chunk of one request."""

    start: float = field(default_factory=time.perf_counter)
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    num_input_tokens: int | None = None

    def add(self, chunk: Chunk, now: float | None = None) -> None:
        # Without num_output_tokens a non-empty chunk counts as one token.
        tokens = chunk.num_output_tokens if chunk.num_output_tokens is not None else int(bool(chunk.text))
        if chunk.text or tokens:
            self.chunk_times.append(time.perf_counter() if now is None else now)
            self.chunk_tokens.append(tokens)
            self.texts.append(chunk.text)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.num_input_tokens = chunk.num_input_tokens or self.num_input_tokens

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.chunk_tokens)

    @property
    def ttft(self) -> float:
        """Seconds from sending to the first token (the whole latency when not streaming)."""
        return self.chunk_times[0] - self.start if self.chunk_times else float("nan")

    @property
    def latency(self) -> float:
        return self.chunk_times[-1] - self.start if self.chunk_times else float("nan")

    @property
    def tokens_per_s(self) -> float:
        """Output tokens over the whole request time."""
        return self.num_output_tokens / self.latency if self.chunk_times else 0.0

    def itls(self) -> list[float]:
        """Inter-token latencies: a chunk of k tokens after a gap g gives k gaps of g/k."""
        gaps = []
        for prev, now, tokens in zip(self.chunk_times[:-1], self.chunk_times[1:], self.chunk_tokens[1:], strict=True):
            gaps.extend([(now - prev) / tokens] * tokens if tokens else [])
        return gaps

    def summary(self) -> str:
        return (
            f"TTFT {self.ttft * 1e3:.1f} ms, {self.num_output_tokens} tokens in {self.latency:.2f} s "
            f"({self.tokens_per_s:.1f} tokens/s), input {self.num_input_tokens} tokens, "
            f"finish_reason {self.finish_reason}"
        )


def add_request_args(parser: argparse.ArgumentParser) -> None:
    """Prompt, images and sampling options shared by the command-line clients."""
    parser.add_argument("prompt", help="the prompt; put one <image> where each image goes")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="image file (repeatable)")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--no-stream", action="store_true", help="one response with the whole text")
    for name, dtype in SAMPLING_DTYPES.items():
        parser.add_argument("--" + name.replace("_", "-"), type=float if dtype is np.float32 else int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--sampling-parameters", help="vLLM-style JSON, e.g. '{\"temperature\": 0}'")


def request_from_args(args: argparse.Namespace) -> GenerateRequest:
    if args.sampling_parameters is not None:
        json.loads(args.sampling_parameters)  # fail here, not on the server, on bad JSON
    sampling = {name: getattr(args, name) for name in SAMPLING_DTYPES if getattr(args, name) is not None}
    missing = [path for path in args.image if not Path(path).is_file()]
    if missing:
        raise SystemExit(f"error: --image: no such file: {', '.join(missing)}")
    if args.image and getattr(args, "model", "ensemble") == "llm":
        raise SystemExit("error: --image works with --model ensemble only (llm takes image embeddings)")
    return GenerateRequest(
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        stream=not args.no_stream,
        images=tuple(encode_image(path) for path in args.image),
        sampling=sampling,
        stop_words=tuple(args.stop),
        sampling_parameters=args.sampling_parameters,
    )
