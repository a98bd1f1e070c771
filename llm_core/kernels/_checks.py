"""Launch-time checks shared by the kernel wrappers, and the PDL prologue they share."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(slots=True)
class KernelSwitches:
    """The kernels' switches (EngineConfig's gemv, pdl, pdl_followers, gemv_prefetch_mb), set once per process
    by `configure` before the first launch."""

    gemv: bool = True  # batch-1 linear layers on kernels/gemv.py (else cuBLAS)
    pdl: bool = True  # programmatic dependent launch on Hopper
    pdl_followers: bool = True  # PDL for the kernels after a GEMV too
    gemv_prefetch_bytes: int = 4 << 20  # weight bytes each GEMV may prefetch into L2 under PDL


SWITCHES = KernelSwitches()


def configure(*, gemv: bool, pdl: bool, pdl_followers: bool, gemv_prefetch_mb: float) -> None:
    SWITCHES.gemv, SWITCHES.pdl, SWITCHES.pdl_followers = gemv, pdl, pdl_followers
    SWITCHES.gemv_prefetch_bytes = int(gemv_prefetch_mb * (1 << 20))
    _pdl_supported.cache_clear()
    pdl_follower_options.cache_clear()


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


# Programmatic dependent launch (Hopper and later). The GEMV (kernels/gemv.py) is launched with
# `launch_pdl`: it may be scheduled while the kernel before it is still running, prefetches its weights
# (which no kernel writes) into L2, and waits (`griddepcontrol.wait`) for that kernel to finish before
# it reads x or writes anything. The kernels that run before a GEMV in a decode step (the norms, the
# fused all-reduce + norm, the decode-attention reduce) signal `griddepcontrol.launch_dependents` at
# their start so the GEMV can be scheduled that early; the signal changes nothing else (the wait is for
# completion). The kernels after a GEMV are PDL-launched as well (pdl_follower_options). SWITCHES.pdl
# (EngineConfig.pdl) turns all of it off. Not under the interpreter.
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # an older triton: no PDL
    gdc_launch_dependents = gdc_wait = None


@functools.cache
def _pdl_supported(device_index: int) -> bool:
    if interpreting() or not SWITCHES.pdl or gdc_wait is None:
        return False
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    if "launch_pdl" not in getattr(CUDAOptions, "__dataclass_fields__", {}):
        return False
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and _pdl_supported(device.index if device.index is not None else 0)


@functools.cache
def pdl_follower_options(device: torch.device) -> dict:
    """Launch options of the kernels that follow a GEMV (norms, the fused all-reduce + norm, rotary + KV
    store): with PDL they are launched early too, so their launch overlaps the GEMV's tail, and wait at the
    top of their body (`PDL` constexpr) before any memory access. SWITCHES.pdl_followers off: only the GEMV."""
    on = pdl_enabled(device) and SWITCHES.pdl_followers
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


@triton.jit
def pdl_prologue(WAIT: tl.constexpr, TRIGGER: tl.constexpr):
    """First statement of a kernel body: WAIT (the kernel is PDL-launched) for the previous kernel before any
    memory access, then TRIGGER: let a PDL-launched kernel after this one be scheduled now."""
    if WAIT:
        gdc_wait()
    if TRIGGER:
        gdc_launch_dependents()
