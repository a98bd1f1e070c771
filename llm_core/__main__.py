"""`python -m llm_core --model-dir DIR --prompt "..."`: generate with the model's tokenizer."""

from __future__ import annotations

import argparse
import sys
import time

from llm_core import Engine, SamplingParams
from llm_core.config import engine_config_from_env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llm_core", description=__doc__)
    ap.add_argument("--model-dir", required=True, help="Hugging Face model directory")
    ap.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--load-format", default="safetensors", choices=["safetensors", "dummy"])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    ap.add_argument("--max-total-tokens", type=int, default=None)
    ap.add_argument("--stream", action="store_true", help="print text as it is generated (first prompt)")
    args = ap.parse_args(argv)

    config = engine_config_from_env(
        model_dir=args.model_dir,
        device=args.device,
        tp=args.tp,
        dtype=args.dtype,
        load_format=args.load_format,
        max_total_tokens=args.max_total_tokens,
    )
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    with Engine(config) as engine:
        tok = engine.tokenizer
        if tok is None:
            print("the model directory has no tokenizer", file=sys.stderr)
            return 2
        prompts = [tok.encode(p) for p in args.prompt]
        start = time.perf_counter()
        if args.stream:
            from llm_core.detokenizer import IncrementalDetokenizer

            detok = IncrementalDetokenizer(tok, prompts[0])
            for chunk in engine.stream(prompts[0], params):
                text = detok.push(chunk.token_ids)
                if chunk.finished:
                    text += detok.finish()
                    text = text[: len(text) - chunk.text_trim]
                sys.stdout.write(text)
                sys.stdout.flush()
            print()
            return 0
        outputs = engine.generate(prompts, params)
        elapsed = time.perf_counter() - start
        for prompt, out in zip(args.prompt, outputs, strict=True):
            print(f"--- {prompt!r} -> ({len(out.token_ids)} tokens, {out.finish_reason})")
            print(out.text)
        total = sum(len(o.token_ids) for o in outputs)
        print(f"--- {total} tokens in {elapsed:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
