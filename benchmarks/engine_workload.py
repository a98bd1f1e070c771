"""The anchor kit's workloads through the engine alone (no Triton), with the step timeline of each.

Same shapes as `../shared/anchor/bench_driver.py`: closed loop (each client sends its next request when
its previous one ends), greedy, ignore_eos, so every request produces exactly its output length. The lengths
are drawn as the kit draws them with its default seed (1234), so W1 here is the kit's W1: its duration is set
by one request of 1,842 output tokens sent 840th, whose decode steps run after everything before it.

  LAT  1 client, 20 requests of 513 -> 256 tokens (the kit's LAT as our server sees it: 512 words + BOS)
  W1   256 clients, 1000 requests, lengths lognormal (means 200 -> 180, sigma 0.8, clipped to 4..2048)
  W2   128 clients, 500 requests of 1024 -> 128 tokens

For each workload: output tokens/s, TTFT and TPOT, and where the rank-0 loop's time went (the engine's
`step_*` stats over the workload: steps, rows and tokens per step kind; schedule / launch / wait / output
seconds; GPU seconds from CUDA events; time between steps). Engine settings come from the environment
(`llm_core/config.py` ENV_VARS, e.g. LLM_MIXED_PREFILL_TOKENS=0), so runs can be compared side by side.

  python benchmarks/engine_workload.py --workloads W1 W2 LAT --out w.json   (GPU: Llama-3.1-8B-shaped dummy)
  python benchmarks/engine_workload.py --device cpu --tiny --workloads W1 --scale 0.02
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.engine_decode import bench_model  # noqa: E402

# name: (requests, clients, input lengths, output lengths); "lognormal" lengths are (mean, sigma, lo, hi).
WORKLOADS = {
    "LAT": (20, 1, 513, 256),  # the kit's 512 words and the BOS our server adds
    "W1": (1000, 256, ("lognormal", 200, 0.8, 4, 2048), ("lognormal", 180, 0.8, 4, 2048)),
    "W2": (500, 128, 1024, 128),
}


def lengths(spec, n: int, rng: np.random.Generator, scale: float) -> list[int]:
    if isinstance(spec, int):
        return [max(1, round(spec * scale))] * n
    _, mean, sigma, lo, hi = spec
    mu = np.log(mean * scale) - sigma * sigma / 2.0
    return np.clip(np.round(rng.lognormal(mu, sigma, size=n)), max(1, lo * scale), hi * scale).astype(int).tolist()


def run_workload(engine, name: str, vocab: int, scale: float, seed: int = 0) -> dict:
    from llm_core import SamplingParams

    num, clients, in_spec, out_spec = WORKLOADS[name]
    num = max(clients, round(num * min(1.0, scale * 4))) if scale < 1 else num
    rng = np.random.default_rng(seed)
    ins, outs = lengths(in_spec, num, rng, scale), lengths(out_spec, num, rng, scale)
    limit = engine.max_model_len
    jobs = [
        (rng.integers(10, vocab, size=min(i, limit - 1)).tolist(), max(1, min(o, limit - i)))
        for i, o in zip(ins, outs, strict=True)
    ]
    q: queue.Queue = queue.Queue()
    sent: dict[str, float] = {}
    expected: dict[str, int] = {}
    first: dict[str, float] = {}
    records = []
    before = engine.stats()
    start = time.perf_counter()

    def send(job) -> None:
        prompt, out_len = job
        params = SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True)
        rid = engine.add_request(prompt, params, output_queue=q)
        sent[rid] = time.perf_counter()
        expected[rid] = out_len

    pending = list(reversed(jobs))
    for _ in range(min(clients, len(pending))):
        send(pending.pop())
    counts: dict[str, int] = {}
    while len(records) < len(jobs):
        chunk = q.get(timeout=600)
        now = time.perf_counter()
        if chunk.error:
            raise RuntimeError(chunk.error)
        rid = chunk.request_id
        if chunk.token_ids and rid not in first:
            first[rid] = now
        counts[rid] = counts.get(rid, 0) + len(chunk.token_ids)
        if chunk.finished:
            n = counts[rid]
            if n != expected[rid] or chunk.finish_reason != "length":
                raise RuntimeError(f"{rid}: {n} tokens ({chunk.finish_reason}), expected {expected[rid]}")
            records.append((first[rid] - sent[rid], (now - first[rid]) / (n - 1) if n > 1 else None, n))
            if pending:
                send(pending.pop())
    wall = time.perf_counter() - start
    after = engine.stats()
    ttft = [r[0] for r in records]
    tpot = [r[1] for r in records if r[1] is not None]
    out_tokens = sum(r[2] for r in records)
    return {
        "workload": name,
        "requests": len(records),
        "clients": clients,
        "wall_s": round(wall, 3),
        "output_tokens": out_tokens,
        "output_tok_s": round(out_tokens / wall, 1),
        "ttft_mean_ms": round(1e3 * float(np.mean(ttft)), 2),
        "ttft_p50_ms": round(1e3 * float(np.median(ttft)), 2),
        "tpot_mean_ms": round(1e3 * float(np.mean(tpot)), 3) if tpot else None,
        "timeline": timeline_delta(before, after),
    }


def timeline_delta(before: dict, after: dict) -> dict:
    """The engine's step_* counters over the workload, with per-step means in ms."""
    delta = {k: after[k] - before.get(k, 0) for k in after if k.startswith("step_")}
    out: dict = {
        "between_s": round(delta.pop("step_between_s", 0.0), 3),
        "idle_s": round(delta.pop("step_idle_s", 0.0), 3),
    }
    kinds = sorted({k.split("_")[1] for k in delta})
    for kind in kinds:
        steps = delta.get(f"step_{kind}_steps", 0)
        if not steps:
            continue
        row = {"steps": steps, "rows_per_step": round(delta[f"step_{kind}_rows"] / steps, 1),
               "tokens_per_step": round(delta[f"step_{kind}_tokens"] / steps, 1)}  # fmt: skip
        for phase in ("schedule", "launch", "wait", "output", "gpu", "wall"):
            total = delta[f"step_{kind}_{phase}_s"]
            row[f"{phase}_s"] = round(total, 3)
            row[f"{phase}_ms_per_step"] = round(1e3 * total / steps, 3)
        out[kind] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="the tiny test model instead of the 8B-shaped dummy")
    ap.add_argument("--workloads", nargs="+", default=["W1"], choices=sorted(WORKLOADS))
    ap.add_argument("--scale", type=float, default=1.0, help="lengths (and, below 1, request counts) scaled")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=1234, help="length draws (the kit's --seed; 1234 there too)")
    ap.add_argument("--label", default="", help="a name for this configuration in the output")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from llm_core import Engine
    from llm_core.config import engine_config_from_env

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, load_format, dtype, vocab = bench_model(Path(tmp), args.tiny, max_position_embeddings=131072)
        config = engine_config_from_env(
            model_dir=model_dir, device=args.device, dtype=dtype, load_format=load_format,
            max_model_len=min(args.max_model_len, 1024) if args.tiny else args.max_model_len,
        )  # fmt: skip
        t0 = time.perf_counter()
        with Engine(config) as engine:
            ready_s = time.perf_counter() - t0
            ready_at = time.time()
            result = {"label": args.label, "config": {k: v for k, v in asdict(config).items() if k != "model_dir"}}
            result["start_to_ready_s"] = round(ready_s, 2)
            result["first_requests"] = first_requests(engine, vocab)
            result["first_requests"]["kernels_compiled"] = compiled_since(ready_at)
            result["startup"] = {k: engine.stats().get(k) for k in ("warmup_s", "cuda_graphs", "prefill_graph_pieces")}
            for name in args.workloads:
                result[name] = run_workload(engine, name, vocab, args.scale, args.seed)
                print(json.dumps({"label": args.label, **result[name]}), flush=True)
            result["kernels_compiled_after_ready"] = compiled_since(ready_at)
    keys = ("label", "start_to_ready_s", "first_requests", "startup", "kernels_compiled_after_ready")
    print(json.dumps({k: result[k] for k in keys}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


def compiled_since(start: float) -> list[str]:
    """Triton kernels compiled since `start` (epoch seconds): the metadata files the compiler wrote to its
    cache. After ready this should stay empty (the engine's warm-up compiles everything a step launches)."""
    cache = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    names = []
    for meta in cache.glob("*/*.json"):
        if meta.name.startswith("__grp__") or meta.stat().st_mtime <= start:
            continue
        try:
            names.append(json.loads(meta.read_text()).get("name", meta.stem))
        except (OSError, ValueError):
            names.append(meta.stem)
    return sorted(names)


def first_requests(engine, vocab: int) -> dict:
    """TTFT of the first 8 requests after ready (sent together, 200 -> 16 tokens): compilation shows here."""
    from llm_core import SamplingParams

    rng = np.random.default_rng(1)
    q: queue.Queue = queue.Queue()
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    sent = {engine.add_request(rng.integers(10, vocab, size=min(200, engine.max_model_len // 2)).tolist(), params,
                               output_queue=q): time.perf_counter() for _ in range(8)}  # fmt: skip
    ttft: dict[str, float] = {}
    done = 0
    while done < 8:
        chunk = q.get(timeout=600)
        if chunk.token_ids and chunk.request_id not in ttft:
            ttft[chunk.request_id] = time.perf_counter() - sent[chunk.request_id]
        done += chunk.finished
    return {"ttft_mean_ms": round(1e3 * float(np.mean(list(ttft.values()))), 1)}


if __name__ == "__main__":
    raise SystemExit(main())
