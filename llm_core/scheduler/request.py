"""Scheduler-side state of one generation request (pure CPU, no device objects)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llm_core.pooling_params import PoolingParams
from llm_core.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued: new, or paused (num_pauses > 0) and holding nothing
    RUNNING = "running"  # holds a row and one KV slot per computed token
    FINISHED = "finished"  # finished or aborted; holds nothing


@dataclass(slots=True, eq=False)
class Request:
    """One request as the router sees it.

    Invariants kept by the router:
      - WAITING / FINISHED: row is None, slots == [], num_computed == 0 (FINISHED keeps
        num_computed at its last value for inspection only).
      - RUNNING: slots[i] is the KV slot of token position i of all_ids. Decoding: len(slots) ==
        num_computed == num_tokens - 1 between steps (the last sampled token's KV is stored by the
        next decode step). Prefilling (is_prefilling, a long prompt part-way through its chunks):
        len(slots) == prefill_len == num_tokens > num_computed.
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    image_embeds: object | None = None  # opaque payload, carried to the runner on prefill
    # Prefix-cache keys of the prompt when they differ from its ids: every token of an image gets a
    # negative key derived from that image's content, so only the same image at the same place matches.
    prompt_keys: list[int] | None = None
    # An embedding request (prefill only): its last chunk is pooled instead of sampled, it never decodes,
    # and its KV slots go back to the free list when it finishes (not to the prefix cache).
    pooling: PoolingParams | None = None
    arrival: int = -1  # monotonic index assigned by Router.add
    status: RequestStatus = RequestStatus.WAITING
    row: int | None = None  # row of the device request table while RUNNING
    slots: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is stored in `slots`
    # Tokens this admission prefills before the first sample (the prompt; prompt + output after a
    # pause). Long prefills run in chunks of at most max_prefill_tokens, one chunk per prefill step.
    prefill_len: int = 0
    # Prefix cache: slots[:num_cached] belong to the cache (shared, locked through cache_node while
    # this request runs); the rest are this request's own.
    num_cached: int = 0
    cache_node: object | None = None
    num_pauses: int = 0  # times this request was preempted and re-queued
    finish_reason: str | None = None

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def cache_keys(self) -> list[int]:
        return (self.prompt_keys if self.prompt_keys is not None else self.prompt_ids) + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def remaining_budget(self) -> int:
        return self.params.max_tokens - len(self.output_ids)

    @property
    def is_prefilling(self) -> bool:
        """Admitted, but chunks of its prefill are still to run (holds all its prefill slots)."""
        return self.status is RequestStatus.RUNNING and self.num_computed < self.prefill_len

    @property
    def is_paused(self) -> bool:
        return self.status is RequestStatus.WAITING and self.num_pauses > 0


__all__ = ["Request", "RequestStatus"]
