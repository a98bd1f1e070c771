"""Per-kernel GPU time of one decode step (Llama-3-8B-shaped `dummy` model, bf16, tp=1, CUDA graph).

Where the time of a decode step goes, to decide which kernels to fuse (issue 5: tp=2 must reach
0.6x of tp=1, so the fixed per-kernel costs matter). For each batch size: the step time (CUDA
events, median), the sum of the kernel times the profiler saw in the same replays, and the kernels
grouped by name (time per step, launches per step).

  python benchmarks/profile_decode.py --batch 1 64 --ctx 512 --out profile.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tp_decode import LLAMA3_8B  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from llm_core.config import EngineConfig
    from llm_core.worker.model_runner import ModelRunner, SeqInput, StepInput

    lines = [f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}", ""]
    max_batch, ctx = max(args.batch), args.ctx
    with tempfile.TemporaryDirectory() as model_dir:
        Path(model_dir, "config.json").write_text(json.dumps(LLAMA3_8B))
        cfg = EngineConfig(
            model_dir=model_dir, device="cuda", dtype="bfloat16", load_format="dummy",
            max_total_tokens=max_batch * (ctx + 1), max_running_requests=max_batch, max_model_len=ctx + 8,
        )  # fmt: skip
        runner = ModelRunner(cfg, 0, None)
        runner.allocate_kv(cfg.max_total_tokens)
        for b in range(max_batch):
            runner.kv.req_to_slot[b, :ctx] = torch.arange(b * (ctx + 1), b * (ctx + 1) + ctx, dtype=torch.int32)
        for batch in args.batch:
            step = StepInput(
                is_prefill=False, seqs=[SeqInput(b, ctx, [17 + b], [b * (ctx + 1) + ctx], 1) for b in range(batch)]
            )
            for _ in range(3):
                runner.forward(step)  # the first captures
            torch.cuda.synchronize()
            times = []
            for _ in range(args.steps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                runner.forward(step)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.steps):
                    runner.forward(step)
                torch.cuda.synchronize()
            kernels: dict[str, list[float]] = defaultdict(list)
            for event in prof.events():
                if event.device_type == torch.autograd.DeviceType.CUDA:
                    kernels[event.name].append(getattr(event, "device_time_total", 0.0))
            try:  # the profiler's own summary, in case the per-event walk above saw nothing
                print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25), flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"key_averages failed: {exc}", flush=True)
            step_ms = statistics.median(times)
            total_us = sum(sum(v) for v in kernels.values()) / args.steps
            launches = sum(len(v) for v in kernels.values()) / args.steps
            lines += [
                f"## batch {batch}, context {ctx}: step {step_ms * 1e3:.0f} us (graph replay, median of {args.steps}); "
                f"kernels {total_us:.0f} us in {launches:.0f} launches per step; "
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
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
