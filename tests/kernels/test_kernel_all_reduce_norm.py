"""The fused all-reduce + residual add + RMSNorm kernel, its ranks simulated one after another.

Every rank's staging buffer, flags and call counts live on one device here. Rank q runs after ranks
0..q-1, so the ranks above it have not pushed their rows nor signalled yet: both are written into
rank q's buffer and flags beforehand (the rows of ranks below q must come from their own kernels).
After a call every flag must hold the call's count and every rank's count must have advanced by one
per row. A broken handshake spins forever, so these tests carry a timeout. The real two-GPU runs:
benchmarks/all_reduce.py, benchmarks/tp_decode.py.
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
        self.row_calls = torch.zeros(max_rows, dtype=torch.int64, device=DEVICE)  # the epochs to expect
        self.stage = [
            torch.full((2, world, max_rows, hidden), float("nan"), dtype=dtype, device=DEVICE) for _ in range(world)
        ]
        self.flags = [torch.zeros((max_rows, world), dtype=torch.int64, device=DEVICE) for _ in range(world)]
        self.epochs = [torch.zeros(max_rows, dtype=torch.int64, device=DEVICE) for _ in range(world)]
        self.stage_ptrs = torch.tensor([t.data_ptr() for t in self.stage], dtype=torch.int64, device=DEVICE)
        self.flag_ptrs = torch.tensor([t.data_ptr() for t in self.flags], dtype=torch.int64, device=DEVICE)

    def call(self, xs, residual, weight, eps):
        rows = xs[0].shape[0]
        self.row_calls[:rows] += 1
        epoch = self.row_calls[:rows]
        for q in range(self.world):  # the ranks above q push and signal before q runs
            for p in range(q + 1, self.world):
                for r in range(rows):
                    self.stage[q][int(epoch[r]) % 2, p, r] = xs[p][r]
            self.flags[q][:rows, q + 1 :] = epoch[:, None]
        outs = [
            all_reduce_add_rms_norm(xs[q], residual, weight, eps, self.stage_ptrs, self.flag_ptrs, self.epochs[q], q)
            for q in range(self.world)
        ]
        for q in range(self.world):
            assert torch.equal(self.epochs[q], self.row_calls), f"rank {q} counted {self.epochs[q]}"
            others = [p for p in range(self.world) if p != q]
            assert torch.equal(self.flags[q][:, others], self.row_calls[:, None].expand(-1, len(others)))
        return outs


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_all_reduce_add_rms_norm(world: int, dtype: torch.dtype, shape: tuple[int, int]) -> None:
    rows, hidden = shape
    ranks = SimulatedRanks(world, max_rows=rows + 3, hidden=hidden, dtype=dtype)
    weight = (1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype)
    # Both staging halves, then the first again; fewer rows in between (rows then differ in epoch).
    for n in (rows, rows, max(rows - 2, 1), rows):
        wide = torch.randn(world, n, hidden + 8, device=DEVICE).to(dtype)
        xs = [wide[q, :, 4 : 4 + hidden] for q in range(world)]  # row-strided views, as projections give
        residual = (torch.randn(n, hidden, device=DEVICE) * 4).to(dtype)
        outs = ranks.call(xs, residual, weight, 1e-5)
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
        all_reduce_add_rms_norm(
            x, x, torch.ones(64, device=DEVICE), 1e-5, ranks.stage_ptrs, ranks.flag_ptrs, ranks.epochs[0], 0
        )
