"""tp=2 vs tp=1 on GPUs: identical greedy tokens for tiny Llama/Qwen2 models in fp32 (CUDA graphs on at tp=2,
all-reduces through symmetric memory and, separately, through NCCL only)."""

from __future__ import annotations

import json
import sys
import tempfile
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
            # tp=2 twice: small all-reduces through symmetric memory (the default) and through NCCL only
            for name, tp, symm in (("tp1", 1, True), ("tp2", 2, True), ("tp2_nccl", 2, False)):
                cfg = EngineConfig(
                    model_dir=model_dir, device=device, tp=tp, dtype="float32", cuda_graph=True, cuda_graph_tp=True,
                    symm_mem_all_reduce=symm,
                )  # fmt: skip
                with Engine(cfg) as engine:
                    outs[name] = [o.token_ids for o in engine.generate(prompts, params)]
            results.append({
                "arch": arch, **overrides,
                "identical": outs["tp1"] == outs["tp2"] == outs["tp2_nccl"],
                "tp2_symm_mem_same_as_tp1": outs["tp1"] == outs["tp2"],
                "tp2_nccl_same_as_tp1": outs["tp1"] == outs["tp2_nccl"],
            })  # fmt: skip
            print(json.dumps(results[-1]), flush=True)
    ok = all(r["identical"] for r in results)
    print("TP CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
