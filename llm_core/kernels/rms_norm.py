"""RMSNorm and fused residual-add + RMSNorm (one program per row, fp32 statistics)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import (
    check_device,
    check_float,
    pdl_enabled,
    pdl_follower_options,
    pdl_prologue,
)


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [T, H]
    residual_ptr,  # [T, H], read only when HAS_RESIDUAL
    weight_ptr,  # [H]
    out_ptr,  # [T, H] contiguous
    residual_out_ptr,  # [T, H] contiguous, written only when HAS_RESIDUAL
    hidden,
    x_row_stride,
    residual_row_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL_TRIGGER: tl.constexpr,  # let a PDL-launched GEMV after this kernel be scheduled now (_checks)
    PDL: tl.constexpr,  # launched with launch_pdl: wait for the previous kernel first
):
    pdl_prologue(PDL, PDL_TRIGGER)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        res = tl.load(residual_ptr + row * residual_row_stride + cols, mask=mask, other=0.0)
        # Round the sum to the activation dtype first, exactly like `x + residual` in torch.
        x = (x.to(tl.float32) + res.to(tl.float32)).to(x.dtype)
        tl.store(residual_out_ptr + row * hidden + cols, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / hidden
    normed = (xf * tl.rsqrt(variance + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * hidden + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x, residual, weight, eps):
    # x, residual: [T, H]; weight: [H]
    assert x.dim() == 2 and weight.dim() == 1 and weight.shape[0] == x.shape[1], (x.shape, weight.shape)
    assert x.stride(1) == 1 and weight.stride(0) == 1, "last dim must be contiguous"
    assert weight.dtype == x.dtype, (weight.dtype, x.dtype)
    check_float(x)
    check_device(x, weight)
    num_rows, hidden = x.shape
    out = torch.empty((num_rows, hidden), dtype=x.dtype, device=x.device)
    residual_out = out
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype and residual.stride(1) == 1
        check_device(x, residual)
        residual_out = torch.empty_like(out)
    if num_rows == 0:
        return out, residual_out
    block = triton.next_power_of_2(hidden)
    num_warps = min(max(block // 512, 1), 16)
    _rms_norm_kernel[(num_rows,)](
        x,
        x if residual is None else residual,
        weight,
        out,
        residual_out,
        hidden,
        x.stride(0),
        x.stride(0) if residual is None else residual.stride(0),
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        PDL_TRIGGER=pdl_enabled(x.device),
        num_warps=num_warps,
        **pdl_follower_options(x.device),
    )
    return out, residual_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [T, H], weight: [H] -> [T, H]
    return _launch(x, None, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # -> (rms_norm(x + residual), x + residual), both [T, H]
    return _launch(x, residual, weight, eps)
