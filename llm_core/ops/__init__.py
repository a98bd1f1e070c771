"""Operation dispatch: our Triton kernels on CUDA, the plain-torch reference elsewhere."""

from __future__ import annotations

from types import ModuleType

import torch

from llm_core.ops import torch_ops

OP_NAMES = (
    "rms_norm",
    "add_rms_norm",
    "apply_rotary",
    "store_kv",
    "rotary_store_kv",
    "prefill_attention",
    "decode_attention",
    "silu_and_mul",
    "linear",
    "linear_silu_and_mul",
    "inject_image_embeds",
)


def select_ops(device: torch.device, force_torch: bool = False) -> ModuleType:
    """Return the module that implements OP_NAMES for `device`.

    `force_torch` (EngineConfig.force_torch_ops) keeps the torch path on a GPU for A/B checks.
    """
    if force_torch or device.type != "cuda":
        return torch_ops
    from llm_core import kernels

    return kernels
