"""tp=2 vs tp=1 on GPUs: identical greedy tokens for tiny Llama/Qwen2 models in fp32 (CUDA graphs on at tp=2,
all-reduces through symmetric memory and, separately, through NCCL only)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llm_core import Engine, EngineConfig, SamplingParams  # noqa: E402
from llm_core.testing.tiny_model import make_tiny_model  # noqa: E402


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch, overrides in (("llama", {}), ("qwen2", {}), ("llama", {"num_key_value_heads": 1})):
            model_dir = str(make_tiny_model(Path(tmp) / f"{arch}-{len(results)}", arch, **overrides))
            prompts = [[3, 4, 5, 6, 7], [9] * 13, [20, 21], list(range(30, 70))]
            params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
            outs = {}
            # tp=2: small all-reduces through symmetric memory (the default); for the first model also NCCL only
            variants = [("tp1", 1, True), ("tp2", 2, True)] + ([("tp2_nccl", 2, False)] if not results else [])
            for name, tp, symm in variants:
                cfg = EngineConfig(
                    model_dir=model_dir, device=device, tp=tp, dtype="float32", cuda_graph=True, cuda_graph_tp=True,
                    symm_mem_all_reduce=symm,
                )  # fmt: skip
                start = time.monotonic()
                with Engine(cfg) as engine:
                    started = time.monotonic()
                    outs[name] = [o.token_ids for o in engine.generate(prompts, params)]
                    generated = time.monotonic()
                print(
                    f"{arch} {name}: start {started - start:.1f} s, generate {generated - started:.1f} s, "
                    f"shutdown {time.monotonic() - generated:.1f} s", flush=True,
                )  # fmt: skip
            results.append({
                "arch": arch, **overrides,
                "identical": all(o == outs["tp1"] for o in outs.values()),
                **{f"{name}_same_as_tp1": outs[name] == outs["tp1"] for name in outs if name != "tp1"},
            })  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
    ok = all(r["identical"] for r in results)
    print("TP CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
