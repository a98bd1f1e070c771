"""Skinny linear (decode GEMV) and its SiLU-and-mul epilogue vs torch_ops, split-K included."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import DEVICE, ON_GPU, assert_rows_close

from llm_core.kernels import gemv
from llm_core.ops import torch_ops

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (out_features, in_features): a tp=2 Llama-3-8B rank's qkv, o, gate_up (per half), down and lm_head on the GPU;
# ragged small ones under the interpreter.
SHAPES = (
    [(3072, 4096), (4096, 2048), (14336, 4096), (4096, 7168), (64128, 4096), (6144, 4096), (37, 4096)]
    if ON_GPU
    else [(37, 96), (16, 200), (9, 64)]
)
# (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) forced, so the interpreter covers split-K, ragged tiles
# and K not a multiple of the split; None: the tuned table / default.
CONFIGS = (
    [None, (8, 512, 4, 4, 3), (16, 256, 1, 8, 1), (2, 2048, 2, 4, 2)]
    if ON_GPU
    else [(8, 32, 1, 1, 1), (4, 32, 3, 1, 1), (16, 64, 2, 2, 2), (4, 16, 1, 1, 1)]
)


def _inputs(rows: int, n: int, k: int, dtype: torch.dtype, bias: bool):
    wide = torch.randn(rows, k + 16, device=DEVICE).to(dtype)
    x = wide[:, 8 : 8 + k]  # a row-strided view
    weight = (torch.randn(n, k, device=DEVICE) / k**0.5).to(dtype)
    b = torch.randn(n, device=DEVICE).to(dtype) if bias else None
    return x, weight, b


def _reference(x, weight, bias):
    # fp32 product rounded once: what a GEMM with fp32 accumulation returns.
    out = x.float() @ weight.float().T
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_linear(bias: bool, shape: tuple[int, int], dtype: torch.dtype, config) -> None:
    n, k = shape
    x, weight, b = _inputs(1, n, k, dtype, bias)
    config = config or gemv.gemv_config(n, k, device=x.device)
    if config is None:
        pytest.skip("the tuned table sends this shape to cuBLAS")
    out = gemv.linear(x, weight, b, config=config)
    assert_rows_close(out, _reference(x, weight, b), dtype)
    # Split-K counters reset themselves: a second call gives the same bits.
    assert torch.equal(out, gemv.linear(x, weight, b, config=config))


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [False, True])
def test_linear_silu_and_mul(bias: bool, dtype: torch.dtype, config) -> None:
    inter, k = (14336, 4096) if ON_GPU else (37, 96)
    x, weight, b = _inputs(1, 2 * inter, k, dtype, bias)
    config = config or gemv.gemv_config(inter, k, silu=True, device=x.device)
    if config is None:
        pytest.skip("the tuned table sends this shape to cuBLAS")
    out = gemv.linear_silu_and_mul(x, weight, b, config=config)
    # The unfused path from the same rounded GEMM output: linear, then SiLU-and-mul.
    ref = torch_ops.silu_and_mul(_reference(x, weight, b).float()).to(dtype)
    assert_rows_close(out, ref, dtype)


def test_dispatch_to_torch() -> None:
    # More than one row, or a transposed weight: torch's linear, bit for bit.
    k, n = 64, 24
    x = torch.randn(2, k, device=DEVICE)
    weight = torch.randn(n, k, device=DEVICE)
    assert torch.equal(gemv.linear(x, weight), torch.nn.functional.linear(x, weight))
    weight_t = torch.randn(k, n, device=DEVICE).T
    x1 = x[:1]
    assert torch.equal(gemv.linear(x1, weight_t), torch.nn.functional.linear(x1, weight_t))
    ref = torch_ops.linear_silu_and_mul(x, torch.cat([weight, weight]))
    assert torch.allclose(gemv.linear_silu_and_mul(x, torch.cat([weight, weight])), ref, atol=1e-5)


def test_default_dispatch_one_row() -> None:
    # Without a forced config one row takes the kernel (the table or the default config) and matches torch.
    x, weight, bias = _inputs(1, 40, 96, torch.float32, bias=True)
    assert gemv.gemv_config(40, 96) is not None
    assert_rows_close(gemv.linear(x, weight, bias), _reference(x, weight, bias), torch.float32)


def test_bad_shapes() -> None:
    weight = torch.randn(8, 32, device=DEVICE)
    with pytest.raises(AssertionError):
        gemv.linear(torch.randn(1, 31, device=DEVICE), weight)
    with pytest.raises(AssertionError):
        gemv.linear(torch.randn(1, 32, device=DEVICE), weight, torch.randn(7, device=DEVICE))


def test_split_k_deterministic() -> None:
    # The last program of each column block adds the partial sums in split order: same bits every call.
    n, k = (4096, 7168) if ON_GPU else (16, 256)
    x, weight, _ = _inputs(1, n, k, torch.bfloat16, bias=False)
    config = (8, 512, 7, 4, 1) if ON_GPU else (8, 32, 4, 1, 1)
    outs = [gemv.linear(x, weight, config=config) for _ in range(5 if ON_GPU else 2)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def _tuned_tables():
    return sorted(gemv._CONFIG_DIR.glob("gemv_*.json"))


@pytest.mark.parametrize("path", _tuned_tables(), ids=lambda p: p.name)
def test_tuned_table_entries_run(path) -> None:
    # Every entry of a shipped table is a well-formed key and either null (cuBLAS) or a launch config that
    # computes the right thing (here at a small ragged shape; at its own shape in the GPU runs above).
    import json
    import re

    table = json.loads(path.read_text())
    assert path.name == f"gemv_{table['device'].replace(' ', '_')}.json"
    configs = table["configs"]
    assert configs, "empty table"
    for key, config in configs.items():
        match = re.fullmatch(r"n(\d+)_k(\d+)_silu([01])", key)
        assert match, key
        assert config is None or (len(config) == 5 and all(isinstance(v, int) and v > 0 for v in config)), key
    for config in {tuple(c) for c in configs.values() if c is not None}:
        x, weight, bias = _inputs(1, 37, 300, torch.float32, bias=True)
        assert_rows_close(gemv.linear(x, weight, bias, config=config), _reference(x, weight, bias), torch.float32)
