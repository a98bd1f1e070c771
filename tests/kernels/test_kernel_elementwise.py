"""RMSNorm, fused add + RMSNorm, SiLU-and-mul, image-embedding injection vs torch_ops."""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import DEVICE, ON_GPU, assert_rows_close

from llm_core import kernels
from llm_core.ops import torch_ops

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (rows, hidden): ragged widths that are not powers of two, and real ones on the GPU.
NORM_SHAPES = [(1, 4096), (37, 4096), (4099, 8192), (5, 5120)] if ON_GPU else [(1, 64), (7, 96), (13, 257)]
SILU_SHAPES = [(1, 14336), (333, 14336), (4096, 18944)] if ON_GPU else [(1, 64), (9, 200), (5, 2500)]


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    rows, hidden = shape
    wide = _randn(rows, hidden + 32, dtype=dtype)
    x = wide[:, 16 : 16 + hidden]  # a row-strided view
    weight = (1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype)
    out = kernels.rms_norm(x, weight, 1e-5)
    assert_rows_close(out, torch_ops.rms_norm(x, weight, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_add_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    rows, hidden = shape
    x = _randn(rows, hidden, dtype=dtype)
    residual = _randn(rows, hidden, dtype=dtype) * 4
    weight = (1 + 0.1 * torch.randn(hidden, device=DEVICE)).to(dtype)
    x_before, residual_before = x.clone(), residual.clone()
    out, residual_out = kernels.add_rms_norm(x, residual, weight, 1e-6)
    ref_out, ref_residual = torch_ops.add_rms_norm(x, residual, weight, 1e-6)
    assert_rows_close(out, ref_out, dtype)
    assert_rows_close(residual_out, ref_residual, dtype)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before), "inputs modified"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SILU_SHAPES)
def test_silu_and_mul(shape: tuple[int, int], dtype: torch.dtype) -> None:
    rows, inter = shape
    x = _randn(rows, 2 * inter, dtype=dtype) * 3
    assert_rows_close(kernels.silu_and_mul(x), torch_ops.silu_and_mul(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("fp32_image", [False, True])
def test_inject_image_embeds(dtype: torch.dtype, index_dtype: torch.dtype, fp32_image: bool) -> None:
    num_tokens, hidden, num_image = (3000, 4096, 1152) if ON_GPU else (40, 96, 13)
    embeds = _randn(num_tokens, hidden, dtype=dtype)
    image = _randn(num_image, hidden, dtype=torch.float32 if fp32_image else dtype)
    positions = torch.randperm(num_tokens, device=DEVICE)[:num_image].to(index_dtype)
    expected = embeds.clone()
    torch_ops.inject_image_embeds(expected, image, positions)
    embeds[positions.long()] = float("nan")  # poison the rows the kernel must write
    kernels.inject_image_embeds(embeds, image, positions)
    if fp32_image and dtype != torch.float32:
        # One rounding to the embedding dtype (truncation under the interpreter for bf16).
        assert torch.isfinite(embeds).all()
        ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
        assert ((embeds.float() - expected.float()).abs() <= expected.float().abs() * ulp).all()
    else:
        assert torch.equal(embeds, expected)


def test_inject_no_images() -> None:
    embeds = _randn(8, 64, dtype=torch.float16)
    before = embeds.clone()
    empty = torch.empty((0, 64), device=DEVICE, dtype=torch.float16)
    kernels.inject_image_embeds(embeds, empty, torch.empty((0,), device=DEVICE, dtype=torch.int64))
    assert torch.equal(embeds, before)
