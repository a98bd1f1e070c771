"""Launch-time checks shared by the kernel wrappers (no kernels here)."""

from __future__ import annotations

import os

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where kernels run on the CPU through numpy."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(*tensors: torch.Tensor) -> None:
    """All tensors on one device: CUDA, or the CPU when running under the interpreter."""
    device = tensors[0].device
    for t in tensors:
        assert t.device == device, f"tensors on {t.device} and {device}"
    assert device.type == "cuda" or interpreting(), f"needs CUDA or TRITON_INTERPRET=1: {device}"


def check_float(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.dtype in FLOAT_DTYPES, f"unsupported dtype {t.dtype}"


def check_index(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.dtype in (torch.int32, torch.int64), f"index tensors must be int32/int64, got {t.dtype}"
        assert t.dim() == 1 and t.stride(0) == 1, "index tensors must be 1-D and contiguous"


def dot_upcast() -> bool:
    """The interpreter's tl.dot runs numpy matmul on raw bits, wrong for bf16: feed it fp32."""
    return interpreting()
