"""Overwrite the embeddings of image placeholder tokens with image-encoder rows, in place."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm_core.kernels._checks import check_device, check_float, check_index


@triton.jit
def _inject_image_embeds_kernel(
    inputs_embeds_ptr,  # [T, H]
    image_embeds_ptr,  # [N, H]
    positions_ptr,  # [N]
    hidden,
    inputs_row_stride,
    image_row_stride,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    pos = tl.load(positions_ptr + i).to(tl.int64)
    row = tl.load(image_embeds_ptr + i * image_row_stride + cols, mask=mask)
    dst = inputs_embeds_ptr + pos * inputs_row_stride + cols
    tl.store(dst, row.to(inputs_embeds_ptr.dtype.element_ty), mask=mask)


def inject_image_embeds(inputs_embeds: torch.Tensor, image_embeds: torch.Tensor, image_positions: torch.Tensor) -> None:
    """In place: inputs_embeds[image_positions[i]] = image_embeds[i]. [T, H], [N, H], [N] int."""
    assert inputs_embeds.dim() == 2 and image_embeds.dim() == 2
    assert image_embeds.shape[1] == inputs_embeds.shape[1], (image_embeds.shape, inputs_embeds.shape)
    assert image_positions.shape == (image_embeds.shape[0],)
    assert inputs_embeds.stride(1) == 1 and image_embeds.stride(1) == 1, "last dim must be contiguous"
    check_float(inputs_embeds, image_embeds)
    check_index(image_positions)
    check_device(inputs_embeds, image_embeds, image_positions)
    num_image_tokens, hidden = image_embeds.shape
    if num_image_tokens == 0:
        return
    block = min(triton.next_power_of_2(hidden), 4096)
    _inject_image_embeds_kernel[(num_image_tokens, triton.cdiv(hidden, block))](
        inputs_embeds,
        image_embeds,
        image_positions,
        hidden,
        inputs_embeds.stride(0),
        image_embeds.stride(0),
        BLOCK=block,
        num_warps=max(min(block // 512, 8), 1),
    )
