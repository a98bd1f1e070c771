"""The fused all-reduce + residual add + RMSNorm kernel, its ranks simulated one after another.

Every rank's staging buffer and flags live on one device here. Rank q runs after ranks 0..q-1, so
the ranks above it have not signalled yet: their flags are set beforehand ("staged") and their rows
pre-staged. The kernel's handshake must leave the flags exactly in that state again (each signal
consumed once), which is what lets the next call reuse them. A broken handshake spins forever, so
these tests carry a timeout. The real two-GPU run is scripts/device/gpu_fused_all_reduce.py.
"""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import DEVICE, ON_GPU, assert_rows_close

from llm_core.kernels.all_reduce_norm import all_reduce_add_rms_norm
from llm_core.ops import torch_ops

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
pytestmark = pytest.mark.timeout(300)

SHAPES = [(1, 4096), (64, 4096), (3, 5120)] if ON_GPU else [(1, 64), (5, 96)]


class SimulatedRanks:
    def __init__(self, world: int, max_rows: int, hidden: int, dtype: torch.dtype):
        self.world, self.max_rows = world, max_rows
        self.stage = [torch.full((2, max_rows, hidden), float("nan"), dtype=dtype, device=DEVICE) for _ in range(world)]
        self.flags = [torch.zeros((max_rows, world), dtype=torch.int32, device=DEVICE) for _ in range(world)]
        for q in range(world):
            self.flags[q][:, q + 1 :] = 1  # ranks above q signalled before q runs
        self.stage_ptrs = torch.tensor([t.data_ptr() for t in self.stage], dtype=torch.int64, device=DEVICE)
        self.flag_ptrs = torch.tensor([t.data_ptr() for t in self.flags], dtype=torch.int64, device=DEVICE)
        self.expected_flags = [f.clone() for f in self.flags]

    def call(self, xs, residual, weight, eps, parity):
        rows = xs[0].shape[0]
        for q in range(self.world):  # what rank q would have staged before signalling
            self.stage[q][parity, :rows] = xs[q]
        outs = [
            all_reduce_add_rms_norm(
                xs[q], residual, weight, eps, self.stage_ptrs, self.flag_ptrs, q, parity, self.max_rows
            )
            for q in range(self.world)
        ]
        for q in range(self.world):
            assert torch.equal(self.flags[q], self.expected_flags[q]), f"rank {q} flags left {self.flags[q]}"
        return outs


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_all_reduce_add_rms_norm(world: int, dtype: torch.dtype, shape: tuple[int, int]) -> None:
    rows, hidden = shape
    ranks = SimulatedRanks(world, max_rows=rows + 3, hidden=hidden, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype)
    for parity in (0, 1, 0):  # the flags and both staging halves are reused
        wide = torch.randn(world, rows, hidden + 8, device=DEVICE).to(dtype)
        xs = [wide[q, :, 4 : 4 + hidden] for q in range(world)]  # row-strided views, as projections give
        residual = (torch.randn(rows, hidden, device=DEVICE) * 4).to(dtype)
        outs = ranks.call(xs, residual, weight, 1e-5, parity)
        reduced = sum(x.float() for x in xs).to(dtype)  # all_reduce in rank order, rounded once
        ref_out, ref_residual = torch_ops.add_rms_norm(reduced, residual, weight, 1e-5)
        for out, residual_out in outs:
            assert_rows_close(out, ref_out, dtype)
            assert_rows_close(residual_out, ref_residual, dtype)
        for out, residual_out in outs[1:]:  # every rank computes the same bits
            assert torch.equal(out, outs[0][0]) and torch.equal(residual_out, outs[0][1])


def test_rows_beyond_staging_buffer_refused() -> None:
    ranks = SimulatedRanks(2, max_rows=2, hidden=64, dtype=torch.float32)
    x = torch.zeros(3, 64, device=DEVICE)
    with pytest.raises(ValueError, match="3 rows exceed"):
        all_reduce_add_rms_norm(x, x, torch.ones(64, device=DEVICE), 1e-5, ranks.stage_ptrs, ranks.flag_ptrs, 0, 0, 2)
