"""The fused all-reduce + residual add + RMSNorm against its two-kernel form, on 2 GPUs.

For each row count: a stress check (many calls with fresh data, fused == symm-mem one-shot
all-reduce followed by the RMSNorm kernel, bit for bit, on every rank), then the time of the 64
such calls a Llama-3-8B decode step makes ([rows, 4096] bf16), replayed from a CUDA graph:
fused, one-shot + norm, NCCL + norm. Decides `FUSED_MAX_ROWS` in llm_core/collectives.py.

  python benchmarks/all_reduce.py --rows 1 2 4 8 16 32 64 --out all_reduce.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tp_decode import _time_cuda  # noqa: E402

HIDDEN = 4096
CALLS = 64  # 2 per layer, 32 layers


def _rank(rank: int, world: int, args: argparse.Namespace) -> None:
    from llm_core import kernels
    from llm_core.collectives import SymmMemAllReduce

    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world,
        device_id=torch.device("cuda", rank),
    )  # fmt: skip
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)  # Triton launches on the current device
    # Buffers for every measured row count, also beyond the engine's FUSED_MAX_ROWS.
    comm = SymmMemAllReduce(dist.group.WORLD, device, torch.bfloat16, HIDDEN, fused_max_rows=max(args.rows))
    weight = (1 + 0.1 * torch.randn(HIDDEN, device=device, generator=torch.Generator(device).manual_seed(7))).to(
        torch.bfloat16
    )
    lines = []
    for rows in args.rows:
        mine = torch.Generator(device).manual_seed(1000 + rank)  # partial sums differ per rank
        same = torch.Generator(device).manual_seed(2000)  # the residual is the same on every rank
        mismatches = 0
        for _ in range(args.stress):
            part = torch.randn(rows, HIDDEN, device=device, generator=mine).to(torch.bfloat16)
            res = torch.randn(rows, HIDDEN, device=device, generator=same).to(torch.bfloat16)
            fused = comm.add_rms_norm(part, res, weight, 1e-5)
            split = kernels.add_rms_norm(comm(part), res, weight, 1e-5)
            mismatches += not all(torch.equal(a, b) for a, b in zip(fused, split, strict=True))
        part = torch.randn(rows, HIDDEN, device=device, generator=mine).to(torch.bfloat16)
        res = torch.randn(rows, HIDDEN, device=device, generator=same).to(torch.bfloat16)

        def nccl_then_norm(part=part, res=res):
            x = part.clone()
            dist.all_reduce(x)
            return kernels.add_rms_norm(x, res, weight, 1e-5)

        paths = {
            "fused": lambda part=part, res=res: comm.add_rms_norm(part, res, weight, 1e-5),
            "one-shot + norm": lambda part=part, res=res: kernels.add_rms_norm(comm(part), res, weight, 1e-5),
            "NCCL + norm": nccl_then_norm,
        }
        times = {}
        for name, fn in paths.items():
            graph = torch.cuda.CUDAGraph()
            fn()
            torch.cuda.synchronize()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                for _ in range(CALLS):
                    fn()
            times[name] = _time_cuda(graph.replay, args.iters) * 1e3 / CALLS
        line = (
            f"| {rows} | {args.stress} | {mismatches} | "
            + " | ".join(f"{times[n]:.2f}" for n in paths)
            + f" | {times['one-shot + norm'] / times['fused']:.2f} |"
        )
        lines.append(line)
        if rank == 0:
            print(line, flush=True)
    if rank == 0 and args.out:
        header = [
            f"Device: {torch.cuda.get_device_name()} x{world}; torch {torch.__version__}",
            "",
            "| rows | stress calls | mismatches (rank 0) | fused us | one-shot + norm us | NCCL + norm us | "
            "speed-up of fused |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        Path(args.out).write_text("\n".join(header + lines) + "\n")
    torch.cuda.synchronize()
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # no destructors: see benchmarks/tp_decode.py


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--stress", type=int, default=200)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--port", type=int, default=29544)
    ap.add_argument("--out")
    args = ap.parse_args()
    os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    if torch.cuda.device_count() < 2:
        print("needs 2 GPUs")
        return 1
    print(
        "| rows | stress calls | mismatches | fused us | one-shot + norm us | NCCL + norm us | speed-up |", flush=True
    )
    mp.spawn(_rank, nprocs=2, args=(2, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
