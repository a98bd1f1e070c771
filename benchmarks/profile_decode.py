"""Per-kernel GPU time of one decode step (Llama-3-8B-shaped `dummy` model, bf16, CUDA graph).

Where the time of a decode step goes, to decide which kernels to fuse (issue 5: tp=2 must reach
0.6x of tp=1, so the fixed per-kernel costs matter). For each batch size: the step time (CUDA
events, median), the sum of the kernel times the profiler saw in the same replays, and the kernels
grouped by name (time per step, launches per step). With --tp 2 both ranks run the same steps and
rank 0 is profiled (NCCL; engine defaults for the all-reduce path).

  python benchmarks/profile_decode.py --batch 1 64 --ctx 512 --out profile.md
  python benchmarks/profile_decode.py --tp 2 --batch 1 64 --out profile_tp2.md

With --mixed N1 N2 ...: a mixed step (what W1 runs while prompts keep arriving): --batch decode rows at
--ctx plus one prompt per length given; piecewise graphs up to LLM_CUDA_GRAPH_MAX_TOKENS (0: eager).

With --prefill N: the same for one prefill step of one N-token prompt (LAT's is 512). Both report the host
time of the launch (forward() returning, before any sync): a launch as long as the GPU time with large gaps
means launch-bound; with small gaps, something in the launch waits for the device.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tp_decode import LLAMA3_8B  # noqa: E402


def _profile(rank: int, tp: int, args: argparse.Namespace, model_dir: str) -> None:
    from llm_core.batch import SeqInput, StepInput
    from llm_core.config import engine_config_from_env
    from llm_core.worker.model_runner import ModelRunner

    if tp > 1:
        dist.init_process_group(
            "nccl", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=tp,
            device_id=torch.device("cuda", rank),
        )  # fmt: skip
    lines = [f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; tp={tp}, rank 0 profiled", ""]
    max_batch, ctx = max(args.batch) + len(args.mixed), max(args.ctx, args.prefill, *args.mixed)
    cfg = engine_config_from_env(
        model_dir=model_dir, device="cuda", dtype="bfloat16", load_format="dummy", tp=tp,
        max_total_tokens=max_batch * (ctx + 1), max_running_requests=max_batch, max_model_len=ctx + 8,
    )  # fmt: skip
    runner = ModelRunner(cfg, rank, dist.group.WORLD if tp > 1 else None)
    if runner.fast_all_reduce is not None and args.no_fuse:
        runner.fast_all_reduce.fuse_norm = False
    runner.allocate_kv(cfg.max_total_tokens)
    for b in range(max_batch):
        runner.kv.req_to_slot[b, :ctx] = torch.arange(b * (ctx + 1), b * (ctx + 1) + ctx, dtype=torch.int32)
    if args.prefill:
        cases = [("prefill", args.prefill)]
    elif args.mixed:
        cases = [("mixed", batch) for batch in args.batch]
    else:
        cases = [("decode", batch) for batch in args.batch]
    for kind, batch in cases:
        if kind == "prefill":  # one prompt of `batch` tokens into row 0's slots
            step = StepInput(is_prefill=True, seqs=[SeqInput(0, 0, [17] * batch, list(range(batch)), batch)])
        elif kind == "mixed":  # `batch` decode rows, then prompts of args.mixed tokens each into the last rows
            decode = [SeqInput(b, ctx, [17 + b], [b * (ctx + 1) + ctx], 1) for b in range(batch)]
            prompts = [
                SeqInput(b, 0, [17] * n, list(range(b * (ctx + 1), b * (ctx + 1) + n)), n)
                for b, n in zip(range(batch, max_batch), args.mixed, strict=False)
            ]
            step = StepInput(is_prefill=True, seqs=decode + prompts, num_decode=batch)
        else:
            step = StepInput(
                is_prefill=False, seqs=[SeqInput(b, ctx, [17 + b], [b * (ctx + 1) + ctx], 1) for b in range(batch)]
            )
        for _ in range(3):
            runner.forward(step)  # the first captures
        torch.cuda.synchronize()
        times, host = [], []
        for _ in range(args.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            runner.forward(step)
            host.append((time.perf_counter() - t0) * 1e3)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        if rank > 0:  # the same steps as rank 0, unprofiled
            for _ in range(args.steps):
                runner.forward(step)
            torch.cuda.synchronize()
            continue
        if args.host_profile:  # where the host's launch time goes (Python functions, by own time)
            prof_py = cProfile.Profile()
            prof_py.enable()
            for _ in range(args.steps):
                runner.forward(step)
            prof_py.disable()
            torch.cuda.synchronize()
            text = io.StringIO()
            pstats.Stats(prof_py, stream=text).sort_stats("tottime").print_stats(40)
            pstats.Stats(prof_py, stream=text).sort_stats("cumulative").print_stats(30)
            lines += [
                f"### host profile of {args.steps} launches (cProfile, by own time, then cumulative)",
                "",
                "```",
                text.getvalue(),
                "```",
                "",
            ]
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                runner.forward(step)
            torch.cuda.synchronize()
        kernels: dict[str, list[float]] = defaultdict(list)
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                kernels[event.name].append(getattr(event, "device_time_total", 0.0))
        step_ms = statistics.median(times)
        total_us = sum(sum(v) for v in kernels.values()) / args.steps
        launches = sum(len(v) for v in kernels.values()) / args.steps
        graphs = runner.use_cuda_graph and runner.prefill_graphs is not None
        num_tokens = sum(len(s.new_token_ids) for s in step.seqs)
        how = "graphs" if graphs and runner.prefill_graphs.bucket_for(step, num_tokens) else "eager"
        what = {
            "prefill": f"prefill of {batch} tokens, {how}",
            "decode": f"batch {batch}, context {ctx}",
            "mixed": f"mixed, {how}: {batch} decode rows at context {ctx} + prompts of {args.mixed} tokens",
        }[kind]
        lines += [
            f"## {what}: step {step_ms * 1e3:.0f} us (median of {args.steps}; host launch "
            f"{statistics.median(host) * 1e3:.0f} us); kernels {total_us:.0f} us in {launches:.0f} launches per step; "
            f"gaps {step_ms * 1e3 - total_us:.0f} us",
            "",
            "| kernel | us per step | launches per step | us per launch |",
            "|---|---:|---:|---:|",
        ]
        for name, durations in sorted(kernels.items(), key=lambda kv: -sum(kv[1])):
            per_step = sum(durations) / args.steps
            n = len(durations) / args.steps
            lines.append(f"| `{name[:90]}` | {per_step:.1f} | {n:.0f} | {per_step / n:.2f} |")
        lines.append("")
        print("\n".join(lines[-(len(kernels) + 5) :]), flush=True)
    if rank == 0 and args.out:
        args.out.write_text("\n".join(lines) + "\n")
    torch.cuda.synchronize()
    if tp > 1:  # leave without destructors, as the engine's workers do (benchmarks/tp_decode.py)
        dist.barrier()
        sys.stdout.flush()
        os._exit(0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prefill", type=int, default=0, help="profile one eager prefill of this many tokens instead")
    ap.add_argument(
        "--mixed", type=int, nargs="*", default=[],
        help="profile eager mixed steps instead: --batch decode rows plus one prompt per length given",
    )  # fmt: skip
    ap.add_argument("--host-profile", action="store_true", help="also cProfile the host side of the launches")
    ap.add_argument("--no-fuse", action="store_true", help="tp > 1: all-reduce and RMSNorm as separate kernels")
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as model_dir:
        Path(model_dir, "config.json").write_text(json.dumps(LLAMA3_8B))
        if args.tp == 1:
            _profile(0, 1, args, model_dir)
        else:
            for var in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS"):
                os.environ[var] = "0" if var == "NCCL_NVLS_ENABLE" else "1"
            mp.spawn(_profile, nprocs=args.tp, args=(args.tp, args, model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
