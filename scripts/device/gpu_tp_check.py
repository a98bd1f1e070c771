"""tp=2 vs tp=1 on GPUs: identical greedy tokens for tiny Llama/Qwen2 models in fp32, CUDA graphs on at
tp=2, all-reduces through NCCL only. With --symm-mem, afterwards the same for the first model with the
symmetric-memory all-reduce (EngineConfig.symm_mem_all_reduce), reported on its own line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llm_core import Engine, SamplingParams
from llm_core.config import engine_config_from_env  # noqa: E402
from llm_core.testing.tiny_model import make_tiny_model  # noqa: E402

PROMPTS = [[3, 4, 5, 6, 7], [9] * 13, [20, 21], list(range(30, 70))]
PARAMS = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)


def run(model_dir: str, label: str, **overrides) -> list[list[int]] | str:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = engine_config_from_env(model_dir=model_dir, device=device, dtype="float32", cuda_graph=True, **overrides)
    start = time.monotonic()
    with Engine(cfg) as engine:
        started = time.monotonic()
        outs = engine.generate(PROMPTS, PARAMS)
        generated = time.monotonic()
        restarts = engine.restarts
    print(
        f"{label}: start {started - start:.1f} s, generate {generated - started:.1f} s, "
        f"shutdown {time.monotonic() - generated:.1f} s, restarts {restarts}", flush=True,
    )  # fmt: skip
    errors = [o.error for o in outs if o.error]
    return f"error: {errors[0]}" if errors else [o.token_ids for o in outs]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symm-mem", action="store_true", help="also try the symmetric-memory all-reduce")
    ap.add_argument("--quick", action="store_true", help="only tiny Llama: tp=1 against tp=2 with engine defaults")
    args = ap.parse_args()
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = str(make_tiny_model(Path(tmp) / "llama", "llama"))
            tp1, tp2 = run(model_dir, "llama tp1", tp=1), run(model_dir, "llama tp2 (defaults)", tp=2)
        ok = isinstance(tp1, list) and tp1 == tp2
        print("QUICK TP CHECK", "PASSED" if ok else f"FAILED: {str(tp2)[:300]}", flush=True)
        return 0 if ok else 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        for arch, overrides in (("llama", {}), ("qwen2", {}), ("llama", {"num_key_value_heads": 1})):
            model_dir = str(make_tiny_model(Path(tmp) / f"{arch}-{len(models)}", arch, **overrides))
            models.append((arch, overrides, model_dir))
            tp1 = run(model_dir, f"{arch} {overrides} tp1", tp=1)
            tp2 = run(model_dir, f"{arch} {overrides} tp2", tp=2, symm_mem_all_reduce=False)
            results.append({"arch": arch, **overrides, "identical": isinstance(tp1, list) and tp1 == tp2})
            print(json.dumps(results[-1]), flush=True)
        ok = all(r["identical"] for r in results)
        print("TP CHECK", "PASSED" if ok else "FAILED", flush=True)
        if args.symm_mem:
            arch, overrides, model_dir = models[0]
            tp1 = run(model_dir, f"{arch} tp1 (again)", tp=1)
            symm = run(model_dir, f"{arch} tp2 symm_mem", tp=2, symm_mem_all_reduce=True)
            same = isinstance(tp1, list) and tp1 == symm
            print(f"SYMM MEM: {'identical to tp1' if same else f'NOT identical: {str(symm)[:300]}'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
