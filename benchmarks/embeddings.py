"""Embedding throughput of the engine: `Engine.embed` calls of `--batch` sequences of `--seq-len` tokens.

Random token ids (the model's weights are random too), last-token pooling, normalized; the first call is a
warm-up. Reports sequences/s and prompt tokens/s per batch size, and the same prompts' prefill as
generation requests (max_tokens=1) for comparison: an embedding request is a prefill without sampling.

  python benchmarks/embeddings.py --out emb.json                       (GPU: Llama-3-8B-shaped dummy, bf16)
  python benchmarks/embeddings.py --device cpu --tiny --batch 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_decode import bench_config, bench_model, model_arguments  # noqa: E402


def run(engine, batch: int, seq_len: int, rounds: int, vocab: int, rng: np.random.Generator) -> dict:
    from llm_core import SamplingParams

    def groups() -> list[list[list[int]]]:
        return [[rng.integers(1, vocab, seq_len).tolist() for _ in range(batch)] for _ in range(rounds + 1)]

    prompts, others = groups(), groups()  # others for generation: no prefix-cache hit on the embedded prompts
    engine.embed(prompts[0])  # warm-up
    start = time.perf_counter()
    for group in prompts[1:]:
        vectors = engine.embed(group)
    embed_s = time.perf_counter() - start
    assert vectors.shape[0] == batch and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    engine.generate(others[0], params)  # warm-up
    for group in others[1:]:
        engine.generate(group, params)
    prefill_s = time.perf_counter() - start
    sequences = batch * rounds
    return {
        "batch": batch, "seq_len": seq_len, "rounds": rounds,
        "embed_seq_per_s": round(sequences / embed_s, 1), "embed_tok_per_s": round(sequences * seq_len / embed_s),
        "generate_1_token_seq_per_s": round(sequences / prefill_s, 1),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[model_arguments([1, 64])]
    )
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    from llm_core import Engine

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = bench_model(Path(tmp), args.tiny)
        vocab = model[3]
        config = bench_config(args, model, args.seq_len + 8, max(args.batch) * (args.seq_len + 8) * 2)
        with Engine(config) as engine:
            rng = np.random.default_rng(0)
            for batch in args.batch:
                row = run(engine, batch, args.seq_len, args.rounds, vocab, rng)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
