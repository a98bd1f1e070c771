"""HTTP client: `generate_stream` (server-sent events, printed as they arrive) or, with
`--no-stream`, `generate` (one JSON response). Standard library only.

    python clients/http_sse.py "Tell me a story" --max-tokens 64 --temperature 0
    python clients/http_sse.py "Tell me a story" --no-stream
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

from common import Chunk, GenerateRequest, RequestTimer, add_request_args, chunk_from_json, http_body, request_from_args


def _post(url: str, body: dict, timeout_s: float):
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code} from {url}: {_error_text(exc.read())}") from None


def _error_text(body: bytes) -> str:
    """The server's error message from a JSON body or an SSE `data:` event."""
    text = body.decode("utf-8", "replace").strip().removeprefix("data:")
    try:
        return json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return text


def _base(url: str) -> str:
    return (url if "://" in url else "http://" + url).rstrip("/")


def stream_sse(
    url: str,
    model: str,
    req: GenerateRequest,
    on_chunk: Callable[[Chunk], None] | None = None,
    timeout_s: float = 300.0,
) -> RequestTimer:
    """POSTs to `generate_stream` and reads `data: {json}` events until the server closes."""
    timer = RequestTimer()
    with _post(f"{_base(url)}/v2/models/{model}/generate_stream", http_body(req), timeout_s) as response:
        for raw_line in response:
            line = raw_line.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue  # blank separators between events
            chunk = chunk_from_json(json.loads(line[len("data:") :]))
            timer.add(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    return timer


def generate(url: str, model: str, req: GenerateRequest, timeout_s: float = 300.0) -> RequestTimer:
    """POSTs to `generate`: one response with the whole text (the request is sent with stream=false)."""
    timer = RequestTimer()
    body = http_body(dataclasses.replace(req, stream=False))
    with _post(f"{_base(url)}/v2/models/{model}/generate", body, timeout_s) as response:
        timer.add(chunk_from_json(json.loads(response.read())))
    return timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_request_args(parser)
    parser.add_argument("--url", default="http://localhost:8000", help="HTTP address")
    parser.add_argument("--model", default="ensemble", help="ensemble only (use llm_direct.py to call llm)")
    args = parser.parse_args(argv)
    if args.model != "ensemble":
        parser.error("--model: http_sse.py sends text_input, which only the ensemble takes; use llm_direct.py for llm")
    req = request_from_args(args)
    try:
        if args.no_stream:
            timer = generate(args.url, args.model, req)
            print(timer.text, end="")
        else:
            timer = stream_sse(args.url, args.model, req, lambda c: print(c.text, end="", flush=True))
    except (RuntimeError, OSError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    print()
    print(timer.summary(), file=sys.stderr)
    return 0 if timer.finish_reason != "error" else 1


if __name__ == "__main__":
    sys.exit(main())
