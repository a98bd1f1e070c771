"""gRPC streaming client: prints the text as it arrives, then TTFT and tokens/s.

python clients/grpc_stream.py "Tell me a story" --max-tokens 64 --temperature 0
python clients/grpc_stream.py "<image> What is in this picture?" --image cat.jpg
python clients/grpc_stream.py "Tell me a story" --model llm --tokenizer /path/to/hf_model
"""

from __future__ import annotations

import argparse
import queue
import sys
import uuid
from collections.abc import Callable

import tritonclient.grpc as grpcclient
from common import (
    Chunk,
    RequestTimer,
    add_request_args,
    chunk_from_grpc,
    grpc_inputs,
    request_from_args,
)
from llm_direct import IncrementalDecoder, chunk_from_llm, llm_input_arrays, load_tokenizer

from llm_core.serving.triton_inputs import infer_inputs


class GrpcStreamer:
    """One client with one open bidirectional stream; runs one request at a time on it."""

    def __init__(self, url: str, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.in_flight = False  # a request was sent and its final response has not come
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def restart(self) -> None:
        """A fresh stream on the same client and channel (after an error the old one may be dead)."""
        self.client.stop_stream(cancel_requests=self.in_flight)
        self.in_flight = False
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def generate(
        self,
        model: str,
        inputs: list,
        parse: Callable[[object], Chunk] = chunk_from_grpc,
        on_chunk: Callable[[Chunk], None] | None = None,
    ) -> RequestTimer:
        """Sends one request (a list of InferInput) and reads its responses until the final one."""
        timer = RequestTimer()
        request_id = uuid.uuid4().hex
        self.in_flight = True
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)
        while True:
            result, error = self.responses.get(timeout=self.timeout_s)
            if error is not None:
                self.in_flight = False  # the request failed, or the whole stream did
                raise error
            if result.get_response().id != request_id:
                continue  # a late response of an earlier request that failed on this stream
            chunk = parse(result)
            timer.add(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
            if chunk.final:
                self.in_flight = False
                return timer

    def close(self) -> None:
        """Cancels a request still in flight, else ends the stream gracefully (a cancelled stream
        leaves grpc's request-reading thread blocked for good)."""
        try:
            self.client.stop_stream(cancel_requests=self.in_flight)
        finally:
            self.client.close()
            # InferenceServerClient.__del__ closes the channel again; under gevent (Locust) that
            # second close, run by the garbage collector at exit, can deadlock on a grpc mutex.
            self.client.close = lambda: None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_request_args(parser)
    parser.add_argument("--url", default="localhost:8001", help="gRPC address host:port")
    parser.add_argument("--model", default="ensemble", help="ensemble (default) or llm (text only)")
    parser.add_argument("--tokenizer", help="with --model llm: HF model directory (default: $LLM_MODEL_DIR)")
    args = parser.parse_args(argv)
    req = request_from_args(args)
    if args.model == "llm":
        tokenizer = load_tokenizer(args.tokenizer)
        inputs = infer_inputs(llm_input_arrays(req, tokenizer(req.prompt)["input_ids"]))
        decoder = IncrementalDecoder(tokenizer)
        parse = lambda result: chunk_from_llm(result, decoder)
    else:
        inputs, parse = grpc_inputs(req), chunk_from_grpc

    streamer = GrpcStreamer(args.url)
    try:
        timer = streamer.generate(args.model, inputs, parse, lambda c: print(c.text, end="", flush=True))
    except grpcclient.InferenceServerException as exc:
        print(f"\nerror: {exc.message()}", file=sys.stderr)
        return 1
    finally:
        streamer.close()
    print()
    print(timer.summary(), file=sys.stderr)
    return 0 if timer.finish_reason != "error" else 1


if __name__ == "__main__":
    sys.exit(main())
