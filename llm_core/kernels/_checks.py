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


def check_attention_inputs(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, req_to_slot: torch.Tensor
) -> int:
    """q: [N, Hq, D]; caches: [S + 1, Hk, D] with Hq % Hk == 0; req_to_slot: [R + 1, L] int32.
    Returns Hk."""
    assert q.dim() == 3 and q.stride(2) == 1, (q.shape, q.stride())
    assert k_cache.dim() == 3 and k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride()
    assert k_cache.shape[2] == q.shape[2] and k_cache.stride(2) == 1
    num_kv_heads = k_cache.shape[1]
    assert q.shape[1] % num_kv_heads == 0, (q.shape[1], num_kv_heads)
    assert q.dtype == k_cache.dtype == v_cache.dtype, (q.dtype, k_cache.dtype)
    assert req_to_slot.dim() == 2 and req_to_slot.dtype == torch.int32 and req_to_slot.stride(1) == 1
    return num_kv_heads
