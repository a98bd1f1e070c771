"""OpenAI Triton kernels with the signatures of `llm_core.ops.torch_ops` (the GPU op set).

Each op lives in its own file: a private @triton.jit kernel and a typed wrapper that checks
shapes, strides, dtypes and devices before launch. Under TRITON_INTERPRET=1 the same wrappers
run on CPU tensors (tests/kernels).
"""

from __future__ import annotations

from llm_core.kernels._checks import configure
from llm_core.kernels.decode_attention import decode_attention
from llm_core.kernels.gemv import linear, linear_silu_and_mul
from llm_core.kernels.inject_image_embeds import inject_image_embeds
from llm_core.kernels.prefill_attention import prefill_attention
from llm_core.kernels.rms_norm import add_rms_norm, rms_norm
from llm_core.kernels.rotary import apply_rotary, rotary_store_kv
from llm_core.kernels.silu_and_mul import silu_and_mul
from llm_core.kernels.store_kv import store_kv

__all__ = [
    "add_rms_norm",
    "apply_rotary",
    "configure",
    "decode_attention",
    "inject_image_embeds",
    "linear",
    "linear_silu_and_mul",
    "prefill_attention",
    "rms_norm",
    "rotary_store_kv",
    "silu_and_mul",
    "store_kv",
]
