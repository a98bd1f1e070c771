"""Engine.embed: prefill-only requests that return each prompt's pooled final hidden state.

They go through the same router and KV pool as generation: admitted like a request that would generate
one token, prefilled (in chunks when long), pooled on rank 0 instead of sampled (worker/pooling.py), and
finished at once, their slots back on the free list.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from llm_core.outputs import StreamChunk
from llm_core.pooling_params import PoolingParams
from llm_core.request_checks import check_request
from llm_core.sampling_params import SamplingParams

if TYPE_CHECKING:
    from llm_core.engine import Engine

# The router reserves one output slot for it (never used: it never decodes).
EMBED_PARAMS = SamplingParams(max_tokens=1, temperature=0.0)


def embed_prompts(engine: Engine, prompts: Sequence[Sequence[int]], pooling: PoolingParams) -> np.ndarray:
    """[N, hidden] fp32, row i the pooled vector of prompts[i]. Every prompt is checked before any is queued
    (ValueError naming the problem); a request that ends without a vector raises RuntimeError."""
    if isinstance(prompts, (str, bytes)) or not all(isinstance(p, Sequence) for p in prompts):
        raise ValueError("prompts must be a list of token-id lists")
    prompts = [[int(t) for t in p] for p in prompts]
    for prompt in prompts:
        if not prompt:
            raise ValueError("an embedding prompt must have at least one token")
        check_request(engine.model_config, engine.max_model_len, prompt, EMBED_PARAMS, None)
    q: queue.Queue = queue.Queue()
    ids: list[str] = []
    try:
        for prompt in prompts:
            ids.append(engine.add_request(prompt, EMBED_PARAMS, output_queue=q, pooling=pooling))
        chunks = engine._wait_all(q, ids)
    except BaseException:  # e.g. KeyboardInterrupt: do not leave the others running
        for request_id in ids:
            engine.abort(request_id)
        raise
    hidden = engine.model_config.hidden_size
    return np.stack([_vector(chunks[rid][-1]) for rid in ids]) if ids else np.zeros((0, hidden), np.float32)


def _vector(last: StreamChunk) -> np.ndarray:
    if last.embedding is None:
        raise RuntimeError(f"embedding request {last.request_id} ended with {last.finish_reason!r}: {last.error}")
    return last.embedding.astype(np.float32, copy=False)
