"""`python -m llm_core.serving.openai --triton-url HOST:GRPC_PORT [--model-dir DIR] [--port 9000]`

The OpenAI-compatible API in front of a running tritonserver that serves our model repository.
The launcher starts it next to tritonserver (`--openai-port`); it also runs on its own against any
such server. It needs the model directory for the tokenizer's chat template (and token strings
of logprobs); generation itself happens in Triton.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from llm_core.serving.model_dir import ENV_MODEL_DIR, resolve_model_dir
from llm_core.serving.openai.app import ServerState, create_app
from llm_core.serving.openai.chat import ChatRenderer, load_chat_template

_ENV_ARGV = "LLM_OPENAI_ARGV"  # the command line, for the worker processes of --workers N


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--triton-url", default="127.0.0.1:8001", help="tritonserver's gRPC address")
    p.add_argument("--triton-model", default="ensemble", help="the Triton model to call")
    p.add_argument("--model-dir", help=f"the served HF directory (default: ${ENV_MODEL_DIR} or the tiny LLaVA)")
    p.add_argument("--served-model-name", help="the `model` clients send (default: the model directory's name)")
    p.add_argument("--chat-template", help="a Jinja chat template (file or text) for models without one")
    p.add_argument("--default-max-tokens", type=int, help="max_tokens when a request gives none (default: Triton's)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--workers", type=int, default=1, help="server processes (each its own event loop)")
    return p.parse_args(argv)


def _takes_images(model_dir: Path) -> bool:
    config = json.loads((model_dir / "config.json").read_text())
    return "vision_config" in config or "image_token_index" in config


def state_factory(args: argparse.Namespace):
    """-> a function building ServerState (called at startup, inside the event loop)."""
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(args.model_dir, build_default=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    renderer = ChatRenderer(tokenizer, str(model_dir), _takes_images(model_dir), load_chat_template(args.chat_template))
    name = args.served_model_name or model_dir.name

    def make_state() -> ServerState:
        from llm_core.serving.openai.triton import TritonBackend

        backend = TritonBackend(args.triton_url, args.triton_model)
        created = int(time.time())
        return ServerState(backend, tokenizer, renderer, name, args.default_max_tokens, created, (args.triton_model,))

    return make_state


def app_from_env():
    """The app of one worker process when --workers > 1 (uvicorn imports it by name)."""
    return create_app(state_factory(parse_args(json.loads(os.environ[_ENV_ARGV]))))


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    print(f"[openai] http://{args.host}:{args.port}/v1 -> Triton gRPC {args.triton_url}", flush=True)
    options = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": args.access_log}
    if args.workers > 1:
        os.environ[_ENV_ARGV] = json.dumps(sys.argv[1:] if argv is None else argv)
        uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(state_factory(args)), **options)
