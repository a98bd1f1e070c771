"""Decode step latency of a Llama-3-8B-shaped `dummy` model at tp=1 and tp=2 (GPU, NCCL).

For each tp, batch size and mode: time ModelRunner.forward of one decode step (context --ctx
tokens per sequence, CUDA events, median of --iters), eagerly launched ("eager") and replayed
from a CUDA graph ("graph", llm_core/worker/cuda_graph.py; the first call captures, outside
the timing). Separately, the all-reduces one step issues (2 per layer on [batch, hidden] bf16),
launched eagerly and replayed from a graph, through NCCL and through the symmetric-memory one-shot
(llm_core/collectives.py). Also: every mode's logits vs eager logits of the same step.
Prints a markdown table; --out writes JSON.

  python benchmarks/tp_decode.py --tp 1 2 --batch 1 64 --ctx 512 --mode eager graph eager_nccl graph_nccl
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
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


def _rank(
    rank: int, tp: int, port: int, model_dir: str, batches: list[int], ctx: int, iters: int, modes, results,
    min_split_len: int | None = None,
    save_logits: str | None = None,
    two_kernel_rotary: bool = False,
    dtype: str = "bfloat16",
):  # fmt: skip
    import dataclasses
    import importlib

    from llm_core.batch import SeqInput, StepInput
    from llm_core.config import engine_config_from_env
    from llm_core.worker.model_runner import ModelRunner

    if stacks_every := float(os.environ.get("LLM_DUMP_STACKS_S", "0")):  # debugging hangs
        faulthandler.dump_traceback_later(stacks_every, repeat=True)

    if two_kernel_rotary:  # the layer's rotary + KV store as two kernels again (the baseline of the fused op)
        from llm_core import kernels

        def rotary_then_store(q, k, v, positions, cos_sin, k_cache, v_cache, slots):
            kernels.apply_rotary(q, k, positions, cos_sin)
            kernels.store_kv(k, v, k_cache, v_cache, slots)

        kernels.rotary_store_kv = rotary_then_store
    if min_split_len:  # try another split rule for decode attention (the kernel reads DEFAULT_CONFIG per call)
        decode_module = importlib.import_module("llm_core.kernels.decode_attention")
        decode_module.DEFAULT_CONFIG = dataclasses.replace(decode_module.DEFAULT_CONFIG, min_split_len=min_split_len)
    if tp > 1:
        dist.init_process_group(
            "nccl",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=tp,
            device_id=torch.device("cuda", rank),
        )
    max_batch = max(batches)
    cfg = engine_config_from_env(
        model_dir=model_dir,
        device="cuda",
        tp=tp,
        dtype=dtype,
        load_format="dummy",
        max_total_tokens=max_batch * (ctx + 1),
        max_running_requests=max_batch,
        max_model_len=ctx + 8,
        cuda_graph=any(m.startswith("graph") for m in modes),
        symm_mem_all_reduce=True,  # the *_nccl modes switch it off
    )
    runner = ModelRunner(cfg, rank, dist.group.WORLD if tp > 1 else None)
    runner.allocate_kv(cfg.max_total_tokens)
    # Context already "cached": rows b hold slots [b*(ctx+1), b*(ctx+1)+ctx).
    for b in range(max_batch):
        runner.kv.req_to_slot[b, :ctx] = torch.arange(b * (ctx + 1), b * (ctx + 1) + ctx, dtype=torch.int32)
    hidden = LLAMA3_8B["hidden_size"]
    graph_runners = {}
    for batch in batches:
        step = StepInput(
            is_prefill=False, seqs=[SeqInput(b, ctx, [17 + b], [b * (ctx + 1) + ctx], 1) for b in range(batch)]
        )
        row = {"tp": tp, "batch": batch, "ctx": ctx}
        logits = {}
        for mode in modes:
            nccl = mode.endswith("_nccl")  # all-reduces through NCCL only (no symmetric-memory one-shot)
            nofuse = mode.endswith("_nofuse")  # symm-mem one-shot all-reduce, then RMSNorm: two kernels
            if (nccl or nofuse) and (tp == 1 or runner.fast_all_reduce is None):
                continue
            if runner.fast_all_reduce is not None:
                runner.fast_all_reduce.enabled = not nccl
                runner.fast_all_reduce.fuse_norm = not nofuse
            runner.use_cuda_graph = mode.startswith("graph")
            if runner.use_cuda_graph:  # one graph runner per all-reduce path
                path = mode.removeprefix("graph")
                if path not in graph_runners:
                    graph_runners[path] = runner.new_graph_runner()
                runner.graph_runner = graph_runners[path]
            start = time.perf_counter()
            logits[mode] = runner.forward(step).clone()  # graph mode: captures here
            torch.cuda.synchronize()
            row[f"first_call_s_{mode}"] = round(time.perf_counter() - start, 3)
            row[f"step_ms_{mode}"] = round(_time_cuda(lambda step=step: runner.forward(step), iters), 3)
        if graph_runners:
            row["graphs_captured"] = sum(g.num_graphs for g in graph_runners.values())
            row["graph_failed"] = runner.graph_failed
        if "eager" in logits:  # every other mode against eager (symmetric-memory all-reduce where tp > 1)
            e = logits["eager"]
            for mode, g in logits.items():
                if mode != "eager":
                    row[f"{mode}_vs_eager_max_rel_diff"] = round(((g - e).abs().max() / e.abs().max()).item(), 6)
                    row[f"{mode}_vs_eager_same_argmax"] = bool((g.argmax(-1) == e.argmax(-1)).all().item())
        if tp > 1:
            # The same exactly representable values on every rank: the exact sum is tp * x.
            act = getattr(torch, dtype)
            x = ((torch.arange(batch * hidden, device="cuda") % 17 - 8) * 0.125).to(act).view(batch, hidden)
            fast = runner.fast_all_reduce
            num = 2 * LLAMA3_8B["num_hidden_layers"]
            paths = {"nccl": lambda x=x, num=num: [dist.all_reduce(x) for _ in range(num)]}
            if fast is not None:
                fast.enabled = True

                def reduce(t, fast=fast):  # torch's one-shot (bf16/fp32), else NCCL as the engine does
                    out = fast(t)
                    if out is None:
                        out = t.clone()
                        dist.all_reduce(out)
                    return out

                one_shot = fast(x) is not None
                row["symm_mem_all_reduce_max_abs_err"] = (reduce(x) - x * tp).abs().max().item()
                row["symm_mem_backend"] = fast.backend if one_shot else "none for this dtype (NCCL)"
                if one_shot:
                    paths["symm_mem"] = lambda x=x, num=num, fast=fast: [fast(x) for _ in range(num)]
                # The fused all-reduce + residual add + RMSNorm against its two-kernel form, same inputs.
                from llm_core import kernels

                gen = torch.Generator(device="cuda").manual_seed(rank)  # different partial sums per rank
                part = torch.randn(batch, hidden, device="cuda", generator=gen).to(act)
                same = torch.Generator(device="cuda").manual_seed(1234)  # the residual is the same on all ranks
                res = torch.randn(batch, hidden, device="cuda", generator=same).to(act)
                w = torch.ones(hidden, device="cuda", dtype=act)
                fast.fuse_norm = True
                fused = fast.add_rms_norm(part, res, w, 1e-5)
                split = kernels.add_rms_norm(reduce(part), res, w, 1e-5)
                row["fused_vs_split_equal"] = all(torch.equal(a, b) for a, b in zip(fused, split, strict=True))
                paths["fused"] = lambda num=num, fast=fast, part=part, res=res, w=w: [
                    fast.add_rms_norm(part, res, w, 1e-5) for _ in range(num)
                ]
                paths["symm_mem_then_norm" if one_shot else "nccl_then_norm"] = (
                    lambda num=num, part=part, res=res, w=w, reduce=reduce: [
                        kernels.add_rms_norm(reduce(part), res, w, 1e-5) for _ in range(num)
                    ]
                )
            for name, fn in paths.items():
                row[f"allreduce_{name}_eager_ms_per_step"] = round(_time_cuda(fn, iters), 3)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    fn()
                row[f"allreduce_{name}_graph_ms_per_step"] = round(_time_cuda(graph.replay, iters), 3)
        if rank == 0 and save_logits:  # to compare runs of different settings (e.g. LLM_PDL=0)
            path = Path(save_logits)
            saved = torch.load(path) if path.exists() else {}
            saved.update({f"tp{tp}_b{batch}_{m}": t.cpu() for m, t in logits.items()})
            torch.save(saved, path)
        if rank == 0:  # as soon as measured: a later failure must not lose it
            results.append(row)
            print(f"row: {json.dumps(row)}", flush=True)
    # Leave without destructors (as the engine's workers do): tearing down the process group and
    # the symmetric-memory mappings at exit can leave one rank waiting for a peer already gone.
    torch.cuda.synchronize()
    if tp > 1:
        dist.barrier()
    sys.stdout.flush()
    os._exit(0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument(
        "--mode", nargs="+", default=["eager", "graph"],
        choices=["eager", "graph", "eager_nccl", "graph_nccl", "eager_nofuse", "graph_nofuse"],
        help="tp > 1: *_nccl: all-reduces through NCCL only; *_nofuse: the symmetric-memory one-shot, then "
        "RMSNorm; the others (engine default): all-reduce + residual add + RMSNorm in one kernel",
    )  # fmt: skip
    ap.add_argument("--decode-min-split-len", type=int, default=None, help="override DecodeConfig.min_split_len")
    ap.add_argument("--two-kernel-rotary", action="store_true", help="rotary, then KV store: two kernels")
    ap.add_argument("--save-logits", default=None, help="add each step's logits to this .pt file (rank 0)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for var, value in (
        ("NCCL_NVLS_ENABLE", "0"),
        ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
        ("NVSHMEM_DISABLE_NVLS", "1"),
    ):
        os.environ[var] = value
    results = mp.Manager().list()
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as model_dir:
        Path(model_dir, "config.json").write_text(json.dumps(LLAMA3_8B))
        for tp in args.tp:
            if tp > torch.cuda.device_count():
                print(f"skip tp={tp}: only {torch.cuda.device_count()} GPUs")
                continue
            port = 29500 + tp
            split_len = args.decode_min_split_len
            try:
                mp.spawn(
                    _rank,
                    nprocs=tp,
                    args=(
                        tp,
                        port,
                        model_dir,
                        args.batch,
                        args.ctx,
                        args.iters,
                        args.mode,
                        results,
                        split_len,
                        args.save_logits,
                        args.two_kernel_rotary,
                        args.dtype,
                    ),
                )
            except Exception as exc:  # keep the other tp's rows; report the failure at the end
                failures.append(f"tp={tp}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1]}")
                print(f"FAILED tp={tp}", flush=True)
    rows = list(results)
    print(f"device: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}")
    print("| tp | batch | ctx | mode | decode step ms | tp2/tp1 (same launch mode at tp=1) | all-reduce ms/step |")
    print("|---|---|---|---|---|---|---|")
    tp1 = {(r["batch"], m): r[f"step_ms_{m}"] for r in rows if r["tp"] == 1 for m in args.mode if f"step_ms_{m}" in r}
    for r in rows:
        for m in args.mode:
            if f"step_ms_{m}" not in r:
                continue
            base = tp1.get((r["batch"], m.removesuffix("_nccl").removesuffix("_nofuse")))
            ratio = f"{r[f'step_ms_{m}'] / base:.2f}" if r["tp"] > 1 and base else ""
            path = "nccl" if m.endswith("_nccl") or "allreduce_symm_mem_eager_ms_per_step" not in r else "symm_mem"
            if path == "symm_mem" and not m.endswith("_nofuse"):
                path = "fused"
            launch = "graph" if m.startswith("graph") else "eager"
            reduce_ms = r.get(f"allreduce_{path}_{launch}_ms_per_step", "")
            print(f"| {r['tp']} | {r['batch']} | {r['ctx']} | {m} | {r[f'step_ms_{m}']} | {ratio} | {reduce_ms} |")
    for r in rows:
        extra = {k: v for k, v in r.items() if not k.startswith("step_ms") and k not in ("tp", "batch", "ctx")}
        print(f"tp={r['tp']} batch={r['batch']}: {json.dumps(extra)}")
    for failure in failures:
        print(f"FAILED {failure}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "failures": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
