"""Time to first token of requests that share a long system prompt, with and without the prefix cache.

Requests run one after another, each = the same --system-len tokens + its own --tail-len tokens. With
the prefix cache the first one prefills everything and leaves its tokens in the KV pool; the later
ones prefill only their tail. Baseline in the same run: prefix_cache=False.
The model: benchmarks.chunked_prefill.cpu_bench_model.

  python benchmarks/prefix_cache.py --device cpu --system-len 3000 --requests 4
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.chunked_prefill import cpu_bench_model  # noqa: E402


def run(model_dir: str, device: str, prefix_cache: bool, system: list[int], tails: list[list[int]]) -> dict:
    from llm_core import Engine, SamplingParams
    from llm_core.config import engine_config_from_env

    config = engine_config_from_env(
        model_dir=model_dir, device=device, dtype="float32", prefix_cache=prefix_cache,
        max_model_len=len(system) + max(map(len, tails)) + 16,
    )  # fmt: skip
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    ttfts, outputs = [], []
    with Engine(config) as engine:
        for tail in tails:
            q: queue.Queue = queue.Queue()
            start = time.perf_counter()
            engine.add_request(system + tail, params, output_queue=q)
            tokens, first = [], None
            while True:
                chunk = q.get(timeout=600)
                if chunk.token_ids and first is None:
                    first = time.perf_counter()
                tokens += chunk.token_ids
                if chunk.finished:
                    break
            ttfts.append(round((first - start) * 1e3, 1))
            outputs.append(tokens)
        hits = engine.stats().get("prefix_cache_hit_tokens_total", 0)
    return {"prefix_cache": prefix_cache, "ttft_ms": ttfts, "hit_tokens": hits, "outputs": outputs}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--system-len", type=int, default=3000)
    ap.add_argument("--tail-len", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    system = [10 + (7 * i) % 200 for i in range(args.system_len)]
    tails = [[300 + r * 17 + j for j in range(args.tail_len)] for r in range(args.requests)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = cpu_bench_model(Path(tmp) / "model")
        for prefix_cache in (False, True):
            rows.append(run(model_dir, args.device, prefix_cache, system, tails))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "outputs"}), flush=True)
    same = rows[0]["outputs"] == rows[1]["outputs"]
    print(f"greedy outputs identical with and without the cache: {same}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
