"""What chunked prefill does for the requests that are already decoding.

One request decodes; after its 20th token a long prompt arrives. Without chunking its whole
prefill runs as one step and the decoding request waits for all of it; with chunks of
--chunk tokens it waits for at most one chunk (plus decode_steps_per_prefill decode steps run
between chunks). Reported: the decoding request's inter-token gaps (median, max) and the long
prompt's time to first token, for max_prefill_tokens = the prompt length (one step) and --chunk.

  python benchmarks/chunked_prefill.py --device cpu --prompt-len 4000 --chunk 512
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(model_dir: str, device: str, max_prefill_tokens: int, prompt_len: int, decode_tokens: int) -> dict:
    from llm_core import Engine, SamplingParams
    from llm_core.config import engine_config_from_env

    config = engine_config_from_env(
        model_dir=model_dir, device=device, dtype="float32", max_prefill_tokens=max_prefill_tokens,
        max_model_len=prompt_len + decode_tokens + 8,
    )  # fmt: skip
    with Engine(config) as engine:
        engine.generate([[5] * 64], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        q: queue.Queue = queue.Queue()
        params = SamplingParams(max_tokens=decode_tokens, temperature=0.0, ignore_eos=True)
        decoding = engine.add_request(list(range(10, 42)), params, output_queue=q)
        stamps: list[float] = []
        long_id, long_sent, long_first = None, 0.0, None
        done = 0
        while done < 2:
            chunk = q.get(timeout=600)
            now = time.perf_counter()
            if chunk.request_id == decoding:
                stamps += [now] * len(chunk.token_ids)
                if len(stamps) >= 20 and long_id is None:
                    long_sent = time.perf_counter()
                    prompt = [10 + (7 * i) % 200 for i in range(prompt_len)]
                    long_id = engine.add_request(prompt, SamplingParams(max_tokens=4, ignore_eos=True), output_queue=q)
            elif chunk.token_ids and long_first is None:
                long_first = now
            done += chunk.finished
    gaps = [b - a for a, b in zip(stamps[20:], stamps[21:], strict=False)]  # from the long prompt's arrival
    return {
        "max_prefill_tokens": max_prefill_tokens,
        "decode_gap_median_ms": round(statistics.median(gaps) * 1e3, 2),
        "decode_gap_max_ms": round(max(gaps) * 1e3, 2),
        "long_prompt_ttft_ms": round((long_first - long_sent) * 1e3, 1),
    }


def cpu_bench_model(out_dir: Path) -> str:
    """A random-weight Llama (hidden 512, 8 layers, 8 q / 2 kv heads, 8k context) in real HF files:
    large enough on the CPU that a long prefill takes far longer than a decode step. Shared with
    benchmarks/prefix_cache.py."""
    from llm_core.testing.tiny_model import make_tiny_model

    return str(make_tiny_model(
        out_dir, "llama", hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=8192,
    ))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--prompt-len", type=int, default=4000)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = cpu_bench_model(Path(tmp) / "model")
        for budget in (args.prompt_len, args.chunk):
            row = run(model_dir, args.device, budget, args.prompt_len, args.decode_tokens)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
