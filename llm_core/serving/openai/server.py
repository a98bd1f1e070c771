"""`python -m llm_core.serving.openai --triton-url HOST:GRPC_PORT [--model-dir DIR] [--port 9000]`

The OpenAI-compatible API in front of a running tritonserver that serves our model repository.
The launcher starts it next to tritonserver (`--openai-port`); it also runs on its own against any
such server. It needs the model directory for the tokenizer's chat template (and token strings
of logprobs); generation itself happens in Triton.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llm_core.serving.model_dir import ENV_MODEL_DIR, resolve_model_dir
from llm_core.serving.openai.app import ServerState, create_app
from llm_core.serving.openai.chat import ChatRenderer, load_chat_template


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
        return ServerState(backend, tokenizer, renderer, name, args.default_max_tokens, int(time.time()))

    return make_state


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    args = parse_args(argv)
    app = create_app(state_factory(args))
    print(f"[openai] http://{args.host}:{args.port}/v1 -> Triton gRPC {args.triton_url}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
