"""SiLU-and-mul: [T, 2I] = [gate | up] -> silu(gate) * up, [T, I]."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import check_device, check_float


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,  # [T, 2I]
    out_ptr,  # [T, I] contiguous
    inter,
    x_row_stride,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * x_row_stride + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    # silu is rounded to the activation dtype before the product, as torch does.
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, (silu * up.to(tl.float32)).to(gate.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [T, 2 * I] -> [T, I]
    assert x.dim() == 2 and x.shape[1] % 2 == 0 and x.stride(1) == 1, (x.shape, x.stride())
    check_float(x)
    check_device(x)
    num_rows, inter = x.shape[0], x.shape[1] // 2
    out = torch.empty((num_rows, inter), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    block = min(triton.next_power_of_2(inter), 2048)
    _silu_and_mul_kernel[(num_rows, triton.cdiv(inter, block))](
        x, out, inter, x.stride(0), BLOCK=block, num_warps=max(min(block // 256, 8), 1)
    )
    return out
