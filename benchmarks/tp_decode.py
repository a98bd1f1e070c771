"""Decode step latency of a Llama-3-8B-shaped `dummy` model at tp=1 and tp=2 (GPU, NCCL).

For each tp and batch size: time ModelRunner.forward of one decode step (context --ctx tokens
per sequence, CUDA events, median of --iters) and, separately, the all-reduces one step
issues (2 per layer on [batch, hidden] bf16). Prints a markdown table; --out writes JSON.

  python benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001, "torch_dtype": "bfloat16",
}


def _time_cuda(fn, iters: int) -> float:
    """Median milliseconds of fn() over iters runs after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _rank(rank: int, tp: int, port: int, model_dir: str, batches: list[int], ctx: int, iters: int, results):
    from llm_core.config import EngineConfig
    from llm_core.worker.model_runner import ModelRunner, SeqInput, StepInput

    if tp > 1:
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=tp,
                                device_id=torch.device("cuda", rank))
    max_batch = max(batches)
    cfg = EngineConfig(model_dir=model_dir, device="cuda", tp=tp, dtype="bfloat16", load_format="dummy",
                       max_total_tokens=max_batch * (ctx + 1), max_running_requests=max_batch, max_model_len=ctx + 8)
    runner = ModelRunner(cfg, rank, dist.group.WORLD if tp > 1 else None)
    runner.allocate_kv(cfg.max_total_tokens)
    # Context already "cached": rows b hold slots [b*(ctx+1), b*(ctx+1)+ctx).
    for b in range(max_batch):
        runner.kv.req_to_slot[b, :ctx] = torch.arange(b * (ctx + 1), b * (ctx + 1) + ctx, dtype=torch.int32)
    hidden = LLAMA3_8B["hidden_size"]
    rows = []
    for batch in batches:
        step = StepInput(is_prefill=False, seqs=[
            SeqInput(b, ctx, [17 + b], [b * (ctx + 1) + ctx], 1) for b in range(batch)
        ])
        step_ms = _time_cuda(lambda step=step: runner.forward(step), iters)
        allreduce_ms = 0.0
        if tp > 1:
            x = torch.randn(batch, hidden, dtype=torch.bfloat16, device="cuda")

            def reduces(x=x):
                for _ in range(2 * LLAMA3_8B["num_hidden_layers"]):
                    dist.all_reduce(x)

            allreduce_ms = _time_cuda(reduces, iters)
        rows.append({"tp": tp, "batch": batch, "ctx": ctx, "step_ms": round(step_ms, 3),
                     "allreduce_ms_per_step": round(allreduce_ms, 3)})
    if rank == 0:
        results.extend(rows)
    if tp > 1:
        dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for var, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
        os.environ[var] = value
    results = mp.Manager().list()
    with tempfile.TemporaryDirectory() as model_dir:
        Path(model_dir, "config.json").write_text(json.dumps(LLAMA3_8B))
        for tp in args.tp:
            if tp > torch.cuda.device_count():
                print(f"skip tp={tp}: only {torch.cuda.device_count()} GPUs")
                continue
            port = 29500 + tp
            mp.spawn(_rank, args=(tp, port, model_dir, args.batch, args.ctx, args.iters, results), nprocs=tp)
    rows = list(results)
    print(f"device: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}")
    print("| tp | batch | ctx | decode step ms | all-reduce ms/step |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tp']} | {r['batch']} | {r['ctx']} | {r['step_ms']} | {r['allreduce_ms_per_step']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
