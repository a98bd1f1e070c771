"""Which GPUs are free: NVML (nvidia-ml-py) when installed, else `nvidia-smi`. Nothing here touches CUDA,
so the fleet launcher never holds a GPU context itself."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

_GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class GpuMemory:
    index: int
    free_bytes: int
    total_bytes: int


def query_gpus() -> list[GpuMemory]:
    try:
        import pynvml
    except ImportError:
        return _query_nvidia_smi()
    pynvml.nvmlInit()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
            out.append(GpuMemory(i, int(info.free), int(info.total)))
        return out
    finally:
        pynvml.nvmlShutdown()


def _query_nvidia_smi() -> list[GpuMemory]:
    cmd = ["nvidia-smi", "--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits"]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot read GPU memory: install nvidia-ml-py or nvidia-smi ({exc})") from exc
    rows = [line.split(",") for line in text.strip().splitlines() if line.strip()]
    return [GpuMemory(int(i), int(free) << 20, int(total) << 20) for i, free, total in rows]


def assign_gpus(
    needs: Sequence[tuple[str, int]], gpus: Sequence[GpuMemory], min_free_gib: float
) -> dict[str, list[int]]:
    """{server name: its GPU indices}: `needs` is (name, tp) per CUDA server, in config order; each takes
    the next tp GPUs with at least min_free_gib free (GPUs with less are in use and skipped). ValueError,
    naming every GPU's free memory, when they run out."""
    free = [g.index for g in gpus if g.free_bytes >= min_free_gib * _GIB]
    out: dict[str, list[int]] = {}
    for name, tp in needs:
        if len(free) < tp:
            seen = ", ".join(f"GPU {g.index}: {g.free_bytes / _GIB:.1f} GiB free" for g in gpus) or "no GPUs"
            raise ValueError(f"server {name!r} needs {tp} free GPU(s) with >= {min_free_gib} GiB; {seen}")
        out[name], free = free[:tp], free[tp:]
    return out
