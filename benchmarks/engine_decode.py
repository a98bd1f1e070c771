"""Decode speed through the whole engine: router, model runner (CUDA graphs), sampler, outputs.

benchmarks/tp_decode.py times `ModelRunner.forward` alone; this times what a client gets: B
requests of --prompt-len random tokens start together with max_tokens=--new-tokens (ignore_eos),
and the decode step time is the wall time from the moment every request has its first token to
the last token, over the steps in between. The difference to tp_decode's step time (same machine,
same shapes) is the per-step host work: scheduling, input tensors, sampling, output messages.

  python benchmarks/engine_decode.py --tp 1 2 --batch 1 64             (GPU: Llama-3-8B-shaped dummy)
  python benchmarks/engine_decode.py --device cpu --tiny --batch 1 4   (CPU: the tiny test model)
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tp_decode import LLAMA3_8B  # noqa: E402


def run_case(engine, batch: int, prompt_len: int, new_tokens: int, vocab: int, seed: int) -> dict:
    from llm_core import SamplingParams

    rng = random.Random(seed)
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    q: queue.Queue = queue.Queue()
    start = time.perf_counter()
    ids = [engine.add_request([rng.randrange(10, vocab) for _ in range(prompt_len)], params, output_queue=q)
           for _ in range(batch)]  # fmt: skip
    first: dict[str, float] = {}
    counts = dict.fromkeys(ids, 0)
    finished = 0
    while finished < batch:
        chunk = q.get(timeout=600)
        now = time.perf_counter()
        if chunk.error:
            raise RuntimeError(chunk.error)
        if chunk.token_ids and chunk.request_id not in first:
            first[chunk.request_id] = now
        counts[chunk.request_id] += len(chunk.token_ids)
        finished += chunk.finished
    end = time.perf_counter()
    assert all(n == new_tokens for n in counts.values()), counts
    all_started = max(first.values())
    steps = new_tokens - 1
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "ttft_last_s": round(all_started - start, 4),
        "decode_step_ms": round((end - all_started) / steps * 1e3, 3),
        "decode_tokens_per_s": round(batch * steps / (end - all_started), 1),
    }


def bench_model(tmp: Path, tiny: bool, **config) -> tuple[str, str, str, int]:
    """(model_dir, load_format, dtype, vocab) in `tmp`: the tiny test Llama (safetensors, fp32), or the
    Llama-3-8B-shaped config with dummy weights (bf16); `config` overrides fields of the latter."""
    from llm_core.testing.tiny_model import make_tiny_model

    if tiny:
        model_dir = str(make_tiny_model(tmp / "tiny", "llama"))
        return model_dir, "safetensors", "float32", json.loads(Path(model_dir, "config.json").read_text())["vocab_size"]
    Path(tmp, "config.json").write_text(json.dumps({**LLAMA3_8B, **config}))
    return str(tmp), "dummy", "bfloat16", LLAMA3_8B["vocab_size"]


def model_arguments(default_batch: list[int]) -> argparse.ArgumentParser:
    """The arguments of a benchmark on `bench_model` (a parent parser): device, --tiny, batch sizes, --out."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="the tiny test model instead of the 8B-shaped dummy")
    p.add_argument("--batch", type=int, nargs="+", default=default_batch)
    p.add_argument("--out", type=Path)
    return p


def bench_config(args: argparse.Namespace, model: tuple[str, str, str, int], max_model_len: int,
                 max_total_tokens: int, **fields):  # fmt: skip
    """The EngineConfig of `model` (`bench_model`'s tuple) for `model_arguments`' args: up to max(--batch) requests."""
    from llm_core.config import engine_config_from_env

    model_dir, load_format, dtype, _ = model
    return engine_config_from_env(
        model_dir=model_dir, device=args.device, dtype=dtype, load_format=load_format,
        max_running_requests=max(args.batch), max_model_len=max_model_len, max_total_tokens=max_total_tokens,
        **fields,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(parents=[model_arguments([1, 64])])
    ap.add_argument("--tp", type=int, nargs="+", default=[1])
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    from llm_core import Engine

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = bench_model(Path(tmp), args.tiny)
        vocab = model[3]
        max_len = max(args.prompt_len, 16) + max(args.new_tokens, 8) + 8
        for tp in args.tp:
            config = bench_config(args, model, max_len, max(args.batch) * max_len, tp=tp)
            with Engine(config) as engine:
                run_case(engine, 1, 16, 8, vocab, seed=0)  # warm-up (captures the batch-1 graph)
                for batch in args.batch:
                    run_case(engine, batch, 16, 4, vocab, seed=1)  # captures this batch's graph
                    row = {"tp": tp, **run_case(engine, batch, args.prompt_len, args.new_tokens, vocab, seed=2)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
