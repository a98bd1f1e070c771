"""Embedding requests on rank 0: pool the final hidden states of their prompt chunks into one vector.

A long prompt is prefilled in chunks over several steps: mean pooling sums each chunk's rows on the device
and divides by the prompt length after the last chunk; last pooling takes the last chunk's last row. The
vectors stay on the device until the loop copies them to the host with the step's sampled ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_core.batch import StepInput, pooled_offsets
from llm_core.scheduler import Request


@dataclass(slots=True)
class PooledVector:
    request: Request
    vector: torch.Tensor  # [hidden] fp32 on the device


class EmbeddingPooler:
    """Sums of mean-pooled requests between their chunks, keyed by request id."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # [hidden] fp32 on the device

    def pool(self, step: StepInput, requests: list[Request], hidden: torch.Tensor) -> list[PooledVector]:
        """hidden: [R, hidden] fp32, the rows of `step`'s embedding requests in step order (pooled_offsets).
        `requests[i]` is the request of step.seqs[i]. Returns the vectors of the requests whose prompt this
        step completed."""
        done: list[PooledVector] = []
        start = 0
        for seq, req in zip(step.seqs, requests, strict=True):
            if seq.pooling is None:
                continue
            rows = hidden[start : start + len(pooled_offsets(seq))]  # [n, hidden]
            start += rows.shape[0]
            is_last = seq.prefix_len + len(seq.new_token_ids) == seq.num_prompt_tokens
            if seq.pooling == "mean":
                vector = self._mean(req, seq.prefix_len, rows, is_last)
            if not is_last:
                continue
            if seq.pooling == "last":
                vector = rows[-1]
            if req.pooling.normalize:
                vector = torch.nn.functional.normalize(vector, dim=-1)
            done.append(PooledVector(req, vector))
        assert start == hidden.shape[0], (start, hidden.shape)
        return done

    def _mean(self, req: Request, prefix_len: int, rows: torch.Tensor, is_last: bool) -> torch.Tensor:
        total = rows.sum(0)  # [hidden]
        if prefix_len > 0:  # a later chunk (a first chunk, also after a pause, starts over)
            total = total + self.sums.pop(req.request_id)
        if not is_last:
            self.sums[req.request_id] = total
            return total
        return total / len(req.prompt_ids)

    def drop(self, request_id: str) -> None:
        self.sums.pop(request_id, None)
