"""Calling the `llm` model directly, without preprocess and postprocess: the client tokenizes the
prompt and detokenizes the streamed ids with the model's tokenizer. Text only: the llm step
takes image embeddings, not images.

llm inputs: input_ids INT32 [1, n], sampling_parameters (JSON), max_tokens, stream.
llm outputs per response: output_ids (the new ids), finish_reason, num_input_tokens.
"""

from __future__ import annotations

import json
import os

import numpy as np
from common import Chunk, GenerateRequest


def load_tokenizer(model_dir: str | None):
    """The HF tokenizer of `model_dir`, else of $LLM_MODEL_DIR, else of the default tiny model."""
    from transformers import AutoTokenizer

    if model_dir is None:
        model_dir = os.environ.get("LLM_MODEL_DIR")
    if model_dir is None:
        from llm_core.serving.model_dir import resolve_model_dir

        model_dir = str(resolve_model_dir(build_default=False))
    return AutoTokenizer.from_pretrained(model_dir)


def llm_input_arrays(req: GenerateRequest, input_ids: list[int]) -> dict[str, np.ndarray]:
    if req.images:
        raise ValueError("the llm model takes no images: send them to the ensemble")
    sampling = {**req.sampling, **json.loads(req.sampling_parameters or "{}")}
    if req.stop_words:
        sampling["stop"] = list(req.stop_words)
    arrays = {
        "input_ids": np.array([input_ids], dtype=np.int32),
        "sampling_parameters": np.array([[json.dumps(sampling).encode("utf-8")]], dtype=np.object_),
        "stream": np.array([[req.stream]], dtype=np.bool_),
    }
    if req.max_tokens is not None:
        arrays["max_tokens"] = np.array([[req.max_tokens]], dtype=np.int32)
    return arrays


class IncrementalDecoder:
    """Text of the ids seen so far, handed out as deltas; an incomplete trailing character
    (decoded as U+FFFD) waits for the ids that complete it."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def add(self, ids: list[int], final: bool) -> str:
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return ""
        delta, self.text = text[len(self.text) :], text
        return delta


def chunk_from_llm(result, decoder: IncrementalDecoder) -> Chunk:
    """An llm response as a Chunk, its text decoded client-side."""
    ids = result.as_numpy("output_ids")
    ids = [] if ids is None else [int(t) for t in ids.reshape(-1)]
    reason = result.as_numpy("finish_reason")
    reason = reason.reshape(-1)[0].decode("utf-8") if reason is not None and reason.size else ""
    num_input = result.as_numpy("num_input_tokens")
    params = result.get_response().parameters
    final = "triton_final_response" in params and params["triton_final_response"].bool_param
    return Chunk(
        text=decoder.add(ids, final=final or bool(reason)),
        finish_reason=reason or None,
        num_input_tokens=int(num_input.reshape(-1)[0]) if num_input is not None and num_input.size else None,
        num_output_tokens=len(ids),
        final=final,
    )
