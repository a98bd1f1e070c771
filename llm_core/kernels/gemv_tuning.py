"""Launch configs of the decode GEMV (kernels/gemv.py): the tuned table per GPU and the split-K scratch."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import triton


class _Workspace:
    """Split-K scratch per device: fp32 partial sums and self-resetting column-block counters.

    Created outside graph capture (the first eager call); a call that would need it during a capture before
    it exists runs without split-K instead."""

    PART_FLOATS = 1 << 20
    COUNTERS = 1 << 14

    def __init__(self) -> None:
        self._by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        buffers = self._by_device.get(device)
        if buffers is None:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return None
            buffers = (
                torch.empty(self.PART_FLOATS, dtype=torch.float32, device=device),
                torch.zeros(self.COUNTERS, dtype=torch.int32, device=device),
            )
            self._by_device[device] = buffers
        return buffers


_WORKSPACE = _Workspace()


_CONFIG_DIR = Path(__file__).parent / "configs"


@functools.cache
def _tuned_table(device: torch.device) -> dict[str, list[int] | None]:
    # benchmarks/gemv.py --write: {"n3072_k4096_silu0": [BLOCK_N, BLOCK_K, SPLIT_K, warps, stages] or null}.
    # Cached per device: read once, not on every linear call of an eager step.
    path = _CONFIG_DIR / f"gemv_{torch.cuda.get_device_name(device).replace(' ', '_')}.json"
    return json.loads(path.read_text())["configs"] if path.exists() else {}


def config_key(n: int, k: int, silu: bool) -> str:
    return f"n{n}_k{k}_silu{int(silu)}"


def gemv_config(n: int, k: int, silu: bool = False, device: torch.device | None = None):
    """(BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) for x [1, k] times W^T [k, n] (n output columns): the
    tuned entry for this GPU and shape (llm_core/kernels/configs/, written by benchmarks/gemv.py; None where
    cuBLAS measured faster), else the shape that won most of the H200 sweep."""
    if device is not None and device.type == "cuda":
        table = _tuned_table(device)
        key = config_key(n, k, silu)
        if key in table:
            return None if table[key] is None else tuple(table[key])
    return 4, min(1024, triton.next_power_of_2(k)), 1, 4, 1
