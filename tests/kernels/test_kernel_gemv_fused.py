"""The GEMV's fused forms against the unfused ops: RMSNorm in the prologue, the residual add and the
tensor-parallel all-reduce in the epilogue (kernels/gemv.py, kernels/_gemv_kernel.py).

The all-reduce's ranks are simulated one after another on one device, as in
test_kernel_all_reduce_norm.py: before rank q runs, the ranks above it have not run yet, so their pushed
blocks (computed by the same kernel, hence the same bits) and their flags are written into rank q's
buffers beforehand; a broken handshake spins forever, so these tests carry a timeout.
"""

from __future__ import annotations

import os

import pytest
import torch
from kernel_inputs import DEVICE, ON_GPU, assert_rows_close

from llm_core.kernels import gemv, rms_norm
from llm_core.ops import torch_ops

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
pytestmark = pytest.mark.timeout(300)
# (N, K): a tp=2 Llama-3-8B rank's qkv, o, down and lm_head on the GPU; ragged small ones under the interpreter.
SHAPES = [(3072, 4096), (4096, 2048), (4096, 7168)] if ON_GPU else [(37, 96), (16, 200)]
CONFIGS = (
    [None, (8, 512, 4, 4, 3), (16, 256, 1, 8, 1)] if ON_GPU else [(8, 32, 1, 1, 1), (4, 32, 3, 1, 1), (16, 64, 2, 2, 2)]
)


def _row(k: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(1, k, device=DEVICE) * scale).to(dtype)


def _weight(n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(n, k, device=DEVICE) / k**0.5).to(dtype)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    out = x.float() @ weight.float().T  # fp32 accumulation, rounded once
    return (out if bias is None else out + bias.float()).to(x.dtype)


def _same_rounding(dtype: torch.dtype) -> bool:
    # The interpreter truncates fp32 -> bf16 casts (a GPU rounds to nearest like torch): bits comparable otherwise.
    return ON_GPU or dtype != torch.bfloat16


def _config(config, n: int, k: int, silu: bool = False):
    config = config or gemv.gemv_config(n, k, silu, DEVICE)
    if config is None:
        pytest.skip("the tuned table sends this shape to cuBLAS")
    return config


@pytest.fixture(params=["late", "exact"])
def norm_mode(request, monkeypatch) -> str:
    # gemv.NORM_LATE (LLM_CORE_GEMV_NORM): 1/rms summed in the main loop, or a first pass and exact rounding
    monkeypatch.setattr(gemv, "NORM_LATE", request.param == "late")
    return request.param


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_rms_norm_linear(bias, shape, dtype, config, norm_mode) -> None:
    n, k = shape
    config = _config(config, n, k)
    x = _row(k, dtype, scale=3.0)  # the residual stream: not unit scale
    norm_weight = (1 + 0.2 * torch.randn(k, device=DEVICE)).to(dtype)
    weight = _weight(n, k, dtype)
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    out = gemv.rms_norm_linear(x, norm_weight, 1e-5, weight, b, config=config)
    # Against the unfused kernels (rms_norm's own rounding to the dtype is checked against torch elsewhere).
    assert_rows_close(out, _product(rms_norm(x, norm_weight, 1e-5), weight, b), dtype)
    # Without a forced config (one row: the kernel, or cuBLAS after the norm where the table says so).
    assert_rows_close(gemv.rms_norm_linear(x, norm_weight, 1e-5, weight, b), out, dtype)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_linear_silu_and_mul(dtype, config, norm_mode) -> None:
    inter, k = (14336, 4096) if ON_GPU else (37, 96)
    config = _config(config, inter, k, silu=True)
    x = _row(k, dtype, scale=3.0)
    norm_weight = (1 + 0.2 * torch.randn(k, device=DEVICE)).to(dtype)
    weight = _weight(2 * inter, k, dtype)
    out = gemv.rms_norm_linear_silu_and_mul(x, norm_weight, 1e-5, weight, config=config)
    normed = rms_norm(x, norm_weight, 1e-5)
    ref = torch_ops.silu_and_mul(_product(normed, weight).float()).to(dtype)
    assert_rows_close(out, ref, dtype)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_add(bias, dtype, config) -> None:
    n, k = SHAPES[1]
    config = _config(config, n, k)
    x, weight, residual = _row(k, dtype), _weight(n, k, dtype), _row(n, dtype, scale=4.0)
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    out = gemv.linear_add(x, weight, residual, b, config=config)
    # Rounded like the two ops: the product (with bias) to the dtype, then the add.
    assert_rows_close(out, _product(x, weight, b) + residual, dtype)
    if _same_rounding(dtype):
        assert torch.equal(out, gemv.linear(x, weight, b, config=config) + residual)


def test_fused_forms_take_several_rows_through_torch() -> None:
    # Several rows: the unfused ops (cuBLAS), same results as composing them.
    x, weight = torch.randn(3, 64, device=DEVICE), torch.randn(24, 64, device=DEVICE)
    residual = torch.randn(3, 24, device=DEVICE)
    norm_weight = torch.rand(64, device=DEVICE) + 0.5
    ref = torch_ops.rms_norm_linear(x, norm_weight, 1e-6, weight)
    assert torch.allclose(gemv.rms_norm_linear(x, norm_weight, 1e-6, weight), ref, atol=1e-5)
    assert torch.allclose(gemv.linear_add(x, weight, residual), torch_ops.linear_add(x, weight, residual))


class SimulatedRanks:
    """Every rank's staging buffer [2, world, N], flags [blocks, world] and call counts on one device."""

    def __init__(self, world: int, n: int, max_blocks: int, dtype: torch.dtype):
        self.world = world
        self.calls = 0
        self.stage = [torch.full((2, world, n), float("nan"), dtype=dtype, device=DEVICE) for _ in range(world)]
        self.flags = [torch.zeros((max_blocks, world), dtype=torch.int64, device=DEVICE) for _ in range(world)]
        stage_ptrs = torch.tensor([t.data_ptr() for t in self.stage], dtype=torch.int64, device=DEVICE)
        flag_ptrs = torch.tensor([t.data_ptr() for t in self.flags], dtype=torch.int64, device=DEVICE)
        self.sites = [
            gemv.RowReduce(stage_ptrs, flag_ptrs, torch.zeros(max_blocks, dtype=torch.int64, device=DEVICE), q)
            for q in range(world)
        ]

    def call(self, xs, weights, residual, config):
        self.calls += 1
        blocks = -(-weights[0].shape[0] // config[0])
        partials = [gemv.linear(x, w, config=config)[0] for x, w in zip(xs, weights, strict=True)]
        outs = []
        for q in range(self.world):  # the ranks above q push and signal before q runs
            for p in range(q + 1, self.world):
                self.stage[q][self.calls % 2, p] = partials[p]
            self.flags[q][:blocks, q + 1 :] = self.calls
            outs.append(gemv.linear_all_reduce_add(xs[q], weights[q], residual, self.sites[q], config=config))
        for q, site in enumerate(self.sites):
            assert (site.epochs[:blocks] == self.calls).all(), f"rank {q} counted {site.epochs[:blocks]}"
            others = [p for p in range(self.world) if p != q]
            assert (self.flags[q][:blocks, others] == self.calls).all()
        return outs, partials


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_linear_all_reduce_add(world, dtype, config) -> None:
    if ON_GPU and os.environ.get("PYTEST_XDIST_WORKER"):
        # On one H200 each case passed alone and the set stalled under 6 parallel workers (session 5, not yet
        # understood: benchmarks/RESULTS.md); a stalled GPU would hold up every other test. Run it alone.
        pytest.skip("GPU: run without xdist (scripts/device/gpu_row_fusion_tp2.sh)")
    n, k = SHAPES[1] if ON_GPU else SHAPES[0]
    config = _config(config, n, k)
    ranks = SimulatedRanks(world, n, max_blocks=n, dtype=dtype)
    weights = [_weight(n, k, dtype) for _ in range(world)]  # each rank's column shard of one projection
    for _ in range(3):  # both staging halves, then the first again
        xs = [_row(k, dtype) for _ in range(world)]
        residual = _row(n, dtype, scale=4.0)
        outs, partials = ranks.call(xs, weights, residual, config)
        reduced = sum(p.float() for p in partials).to(dtype)  # the all-reduce in rank order, rounded once
        expected = (reduced.float() + residual.float()).to(dtype)
        exact = sum(_product(x, w).float() for x, w in zip(xs, weights, strict=True)) + residual.float()
        assert_rows_close(outs[0], exact, dtype)
        for out in outs[1:]:  # every rank computes the same bits
            assert torch.equal(out, outs[0])
        if _same_rounding(dtype):  # those of the all-reduce, then the add
            assert torch.equal(outs[0], expected)


def test_linear_all_reduce_add_declines_too_many_blocks() -> None:
    ranks = SimulatedRanks(2, 16, max_blocks=3, dtype=torch.float32)
    x, weight = _row(32, torch.float32), _weight(16, 32, torch.float32)
    # 16 columns in blocks of 4 need 4 counters: the call is refused (the caller all-reduces) and nothing moved.
    assert gemv.linear_all_reduce_add(x, weight, _row(16, torch.float32), ranks.sites[0], (4, 32, 1, 1, 1)) is None
    assert (ranks.sites[0].epochs == 0).all() and (ranks.flags[1] == 0).all()
