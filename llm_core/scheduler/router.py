"""Continuous-batching router with future-aware admission (docs/ARCHITECTURE.md, Scheduler).

Pure CPU: ints and lists. The rank-0 worker loop drives it:

    batch = router.schedule()           # allocates slots/rows, commits num_computed
    ... run the model on batch, sample one token per seq that `samples` ...
    for seq in batch.seqs:
        if seq.samples:
            router.append_token(seq.request, token)
            if done: router.finish(seq.request, reason)
    # add() / abort() only here, between steps

Chunked prefill: a prefill step carries at most max_prefill_tokens new tokens. A prompt longer
than what is left of that budget is admitted (all its slots allocated at once) and prefilled in
chunks over several prefill steps, oldest first, before any new admission; only its last chunk
samples. Decode steps of the other requests run in between, so a long prompt never stalls them
for more than one chunk. Image prompts too: a chunk may start or end inside an image's tokens.

Mixed steps (mixed_prefill_tokens > 0): when a prefill is due while other requests decode, the
decoding requests ride along in the same forward as the prefill work, one token each, and that
prefill work is capped at mixed_prefill_tokens, so a decode step never waits for a whole
max_prefill_tokens prefill. A step with nothing to decode prefills up to max_prefill_tokens.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from llm_core.scheduler.admission import peak
from llm_core.scheduler.allocators import RowAllocator, SlotAllocator
from llm_core.scheduler.prefix_cache import CacheNode, PrefixCache
from llm_core.scheduler.request import Request, RequestStatus

_EVICT_BATCH = 256  # slots freed from the prefix cache at least, once the free list runs short


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    request: Request
    row: int  # row of the device request table
    prefix_len: int  # tokens of this sequence whose KV is already stored
    new_token_ids: list[int]  # tokens at positions prefix_len .. prefix_len + len - 1
    new_slots: list[int]  # KV slot of each new token, same length as new_token_ids
    samples: bool = True  # False for a prefill chunk that is not the request's last
    cached_slots: Sequence[int] = ()  # first chunk after a prefix-cache hit: slots of positions 0..prefix_len-1


@dataclass(slots=True)
class Batch:
    """decode: one new token per seq; prefill: prompt chunks; mixed: the decode seqs first, then chunks."""

    kind: Literal["prefill", "decode", "mixed"]
    seqs: list[ScheduledSeq]
    num_decode: int = 0  # mixed: the first num_decode seqs are decode rows (one new token each)

    @property
    def is_prefill(self) -> bool:
        """Runs the prefill forward (packed queries of any length): prefill and mixed steps."""
        return self.kind != "decode"

    @property
    def num_tokens(self) -> int:
        return sum(len(seq.new_token_ids) for seq in self.seqs)


class Router:
    """Decides what runs each step and owns the KV slot and request-row free lists.

    schedule() commits the batch it returns: rows and slots are allocated and every
    request.num_computed already counts the batch's new tokens. The caller must run the batch
    and call append_token() once per seq (and finish() where the request is done) before the
    next schedule(); add() and abort() are called only between steps.

    Invariants between steps:
      - slots_used == sum(len(r.slots) for r in running), rows_used == len(running), and every
        running request has len(slots) == num_computed == num_tokens - 1 (decoding) or
        len(slots) == prefill_len == num_tokens > num_computed (prefilling, chunks to go);
      - strict FCFS: `waiting` is sorted by arrival and every running request arrived before
        every waiting one (paused requests go back to the front of `waiting`);
      - exact budgets (optimistic=False): the running set satisfies fits(), so a decode step
        never lacks slots and nothing is ever paused. A prefilling request counts with its
        budget plus the decode steps it may still wait for its chunks (_prefill_delays), and
        every request with `lookahead` more steps of life (finish() may come that much later);
      - once every request has finished or been aborted, all slots and rows are free.
    """

    def __init__(
        self,
        num_slots: int,
        max_running_requests: int,
        max_prefill_tokens: int,
        max_model_len: int,
        decode_steps_per_prefill: int = 4,
        optimistic: bool = False,
        optimistic_ratio: float = 0.5,
        prefix_cache: bool = False,
        mixed_prefill_tokens: int = 0,
        lookahead: int = 0,
    ):
        for name, value in (("max_prefill_tokens", max_prefill_tokens), ("max_model_len", max_model_len)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if decode_steps_per_prefill < 0:
            raise ValueError(f"decode_steps_per_prefill must be >= 0, got {decode_steps_per_prefill}")
        if mixed_prefill_tokens < 0:
            raise ValueError(f"mixed_prefill_tokens must be >= 0, got {mixed_prefill_tokens}")
        if not 0.0 < optimistic_ratio <= 1.0:
            raise ValueError(f"optimistic_ratio must be in (0, 1], got {optimistic_ratio}")
        self.slot_allocator = SlotAllocator(num_slots)
        self.row_allocator = RowAllocator(max_running_requests)
        self.num_slots = num_slots
        self.max_prefill_tokens = max_prefill_tokens
        self.max_model_len = max_model_len
        self.decode_steps_per_prefill = decode_steps_per_prefill
        self.mixed_prefill_tokens = min(mixed_prefill_tokens, max_prefill_tokens)
        # Steps a request may keep its slots after its last decode step: 1 when the caller learns the sampled
        # ids one step late (the overlapped loop), so finish() comes one step after the step that ends it.
        self.lookahead = lookahead
        self.optimistic = optimistic
        self.optimistic_ratio = optimistic_ratio
        self.waiting: deque[Request] = deque()  # read-only for callers
        self.running: dict[str, Request] = {}  # read-only for callers; in admission order
        self._live: dict[str, Request] = {}  # waiting or running, by request_id
        self._next_arrival = 0
        self._decodes_since_prefill = decode_steps_per_prefill
        self.total_pauses = 0
        self.cache = PrefixCache() if prefix_cache else None
        self.cache_hit_tokens = 0  # prompt tokens taken from the prefix cache instead of prefilled

    # --- requests in and out -------------------------------------------------------------
    def add(self, req: Request) -> None:
        """Queue a new request; ValueError (with the reason) if it can never be served."""
        reason = self._reject_reason(req)
        if reason is not None:
            raise ValueError(f"request {req.request_id!r} rejected: {reason}")
        req.arrival = self._next_arrival
        self._next_arrival += 1
        self.waiting.append(req)
        self._live[req.request_id] = req

    def append_token(self, req: Request, token_id: int) -> None:
        if req.status is not RequestStatus.RUNNING:
            raise ValueError(f"append_token: request {req.request_id!r} is {req.status.value}")
        req.output_ids.append(token_id)

    def finish(self, req: Request, reason: str, num_output: int | None = None) -> None:
        """Free the slots and row of a running request and forget it. `num_output`: its output ends there
        (the scheduler loop may already have appended an id sampled past the finish)."""
        if self.running.get(req.request_id) is not req:
            raise ValueError(f"finish: request {req.request_id!r} is not running")
        if num_output is not None:
            del req.output_ids[num_output:]
        del self.running[req.request_id]
        del self._live[req.request_id]
        if self.cache is not None and req.pooling is None:
            # The stored tokens (all but the last sampled one) stay, for later requests to share.
            self.slot_allocator.free(self.cache.insert(req.cache_keys[: len(req.slots)], req.slots))
            req.num_cached = len(req.slots)  # all adopted by the cache or freed just now
        self._release(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason

    def abort(self, request_id: str) -> Request | None:
        """Drop a waiting, paused or running request; None if it is unknown (already done)."""
        req = self._live.pop(request_id, None)
        if req is None:
            return None
        if req.status is RequestStatus.RUNNING:
            del self.running[request_id]
            self._release(req)
        else:
            self.waiting.remove(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = "abort"
        return req

    def has_work(self) -> bool:
        return bool(self._live)

    def stats(self) -> dict[str, int]:
        paused = 0
        for req in self.waiting:  # paused requests form the front of the queue
            if req.num_pauses == 0:
                break
            paused += 1
        return {
            "slots_total": self.num_slots,
            # held by requests, or cached and locked by one; unlocked cached slots count as free
            "slots_used": self.slot_allocator.num_used - (self.cache.num_evictable if self.cache else 0),
            "slots_cached": self.cache.num_slots if self.cache else 0,
            "prefix_cache_hit_tokens_total": self.cache_hit_tokens,
            "running": len(self.running),
            "waiting": len(self.waiting),
            "paused": paused,
            "total_pauses": self.total_pauses,
        }

    # --- scheduling ----------------------------------------------------------------------
    def schedule(self) -> Batch | None:
        """Prefill (continue chunked prompts, then admit new work) when nothing can decode or
        every `decode_steps_per_prefill` decode steps, with the decoding requests riding along
        when mixed steps are on; otherwise decode every request that has finished its prefill.
        None when idle."""
        decodable = self._decodable()  # one pass over the running requests per step
        prefilling = any(r.is_prefilling for r in self.running.values())
        if (self.waiting or prefilling) and (
            not decodable or self._decodes_since_prefill >= self.decode_steps_per_prefill
        ):
            if decodable and self.mixed_prefill_tokens:
                return self._schedule_mixed(decodable)
            batch = self._schedule_prefill(self.max_prefill_tokens)
            if batch is not None:
                self._decodes_since_prefill = 0
                return batch
        if decodable:
            batch = self._schedule_decode(decodable)
            if batch.seqs:
                self._decodes_since_prefill += 1
                return batch
            batch = self._schedule_prefill(self.max_prefill_tokens)  # every decodable request was paused
            if batch is not None:
                self._decodes_since_prefill = 0
            return batch
        return None

    def _schedule_mixed(self, decodable: list[Request]) -> Batch | None:
        """One decode token for every decodable request, then up to mixed_prefill_tokens of prefill.
        The decode slots are allocated first (pausing if they run short), so admission sees them held."""
        decode = self._schedule_decode(decodable)
        prefill = self._schedule_prefill(self.mixed_prefill_tokens)
        if prefill is None:
            if decode.seqs:
                self._decodes_since_prefill += 1
                return decode
            return None
        self._decodes_since_prefill = 0
        if not decode.seqs:
            return prefill
        return Batch("mixed", decode.seqs + prefill.seqs, num_decode=len(decode.seqs))

    def _schedule_prefill(self, budget: int) -> Batch | None:
        seqs = []
        for req in self.running.values():  # chunks of admitted prompts first, oldest first
            if budget <= 0:
                break
            if req.is_prefilling:
                n = min(req.prefill_len - req.num_computed, budget)
                seqs.append(self._chunk(req, n))
                budget -= n
        admitted = self._admit(budget) if budget > 0 else []
        for req, node, cached in admitted:
            n = req.num_tokens
            req.row = self.row_allocator.alloc()
            req.slots = cached + self._alloc(n - len(cached))
            req.num_computed = req.num_cached = len(cached)
            req.cache_node = node  # locked by _admit
            req.prefill_len = n  # a resumed request recomputes prompt + generated tokens
            req.status = RequestStatus.RUNNING
            self.running[req.request_id] = req
            self.cache_hit_tokens += len(cached)
            todo = n - len(cached)
            chunk = min(todo, budget)  # image prompts too: a chunk may end inside an image's tokens
            seqs.append(self._chunk(req, chunk, cached))
            budget -= chunk
        return Batch("prefill", seqs) if seqs else None

    @staticmethod
    def _chunk(req: Request, n: int, cached_slots: Sequence[int] = ()) -> ScheduledSeq:
        """The next n tokens of req's prefill (commits num_computed)."""
        start = req.num_computed
        req.num_computed = start + n
        return ScheduledSeq(
            req, req.row, start, req.all_ids[start : start + n], req.slots[start : start + n],
            samples=req.num_computed == req.prefill_len, cached_slots=cached_slots,
        )  # fmt: skip

    def _alloc(self, n: int) -> list[int]:
        """n free slots, evicting unlocked prefix-cache entries when the free list is short."""
        short = n - self.slot_allocator.num_free
        if short > 0 and self.cache is not None:
            # In batches: each eviction walks the tree, and a decode step needs one slot per request.
            self.slot_allocator.free(self.cache.evict(max(short, _EVICT_BATCH)))
        return self.slot_allocator.alloc(n)

    def _num_available(self) -> int:
        return self.slot_allocator.num_free + (self.cache.num_evictable if self.cache else 0)

    def _prefill_delays(self) -> tuple[dict[str, int], int]:
        """Upper bound on the decode steps each prefilling request may still wait before it samples,
        and the prefill tokens still to run. Prefill steps serve chunks oldest first, max_prefill_tokens
        at a time, and at most decode_steps_per_prefill decode steps run between two of them: a request
        with R tokens to go in itself and the requests before it samples within
        decode_steps_per_prefill * ceil(R / max_prefill_tokens) decode steps. Until then it holds
        all its slots without growing: in fits() it lives that many steps longer, growing as before."""
        delays: dict[str, int] = {}
        ahead = 0
        for req in self.running.values():
            if req.is_prefilling:
                ahead += req.prefill_len - req.num_computed
                delays[req.request_id] = self._delay(ahead)
        return delays, ahead

    def _delay(self, tokens_ahead: int) -> int:
        # A mixed step decodes too, and may carry as little as mixed_prefill_tokens of prefill.
        if self.mixed_prefill_tokens:
            return (self.decode_steps_per_prefill + 1) * math.ceil(tokens_ahead / self.mixed_prefill_tokens)
        return self.decode_steps_per_prefill * math.ceil(tokens_ahead / self.max_prefill_tokens)

    def _admit(self, token_budget: int) -> list[tuple[Request, CacheNode | None, list[int]]]:
        """Pop from the head of `waiting` while there are rows, prefill tokens left this step and
        the next request passes the future-aware slot check. A prompt longer than the tokens left
        is admitted and chunked (the runner gives each chunk the image embedding rows of the image
        tokens it holds).

        With the prefix cache, a text request takes the longest cached prefix of its tokens (all
        but the last, which must be computed to sample) and locks it; the check then counts the
        request's own slots, plus every locked cache slot, which nothing can evict meanwhile.
        Returns (request, locked cache node or None, cached slots) in admission order."""
        delays, ahead = self._prefill_delays()
        entries = sorted(
            (
                -(self._budget(r) + delays.get(r.request_id, 0) + self.lookahead),
                len(r.slots) - r.num_cached,
                self._budget(r),
            )  # fmt: skip
            for r in self.running.values()
        )
        cache = self.cache
        admitted: list[tuple[Request, CacheNode | None, list[int]]] = []
        num_rows = self.row_allocator.num_free
        while self.waiting and len(admitted) < num_rows and token_budget > 0:
            req = self.waiting[0]
            node, cached = None, []
            if cache is not None and _may_share_prefix(req):
                node, cached = cache.match(req.cache_keys[: req.num_tokens - 1])
                node = node if cached else None
            n = req.num_tokens - len(cached)  # tokens to prefill
            rest = n - min(n, token_budget)
            grows = self._budget(req)
            candidate = (-(grows + (self._delay(ahead + rest) if rest else 0) + self.lookahead), n, grows)
            bisect.insort(entries, candidate)
            locked = 0 if cache is None else cache.num_locked + (cache.unlocked_on_path(node) if node else 0)
            if peak(entries) + locked > self.num_slots:
                break  # FCFS: never skip ahead of a request that does not fit
            if node is not None:
                cache.lock(node)
            self.waiting.popleft()
            admitted.append((req, node, cached))
            ahead += rest
            token_budget -= n - rest
        return admitted

    def _decodable(self) -> list[Request]:
        """Running requests past their prefill with tokens to go. A request at its budget or at the context
        end is only waiting for finish() (its last id is still on the device, in the overlapped loop), an
        embedding request past its prefill for its pooled vector."""
        limit = self.max_model_len
        return [
            r for r in self.running.values()
            if not r.is_prefilling and r.remaining_budget > 0 and r.num_tokens < limit and r.pooling is None
        ]  # fmt: skip

    def _schedule_decode(self, reqs: list[Request]) -> Batch:
        """Decode `reqs` (the running requests past their prefill), pausing the newest first if
        the free slots cannot take one more token each."""
        if len(reqs) > self._num_available():
            self._pause_newest(len(reqs))
            reqs = self._decodable()
        new_slots = self._alloc(len(reqs))
        seqs = []
        for req, slot in zip(reqs, new_slots, strict=True):
            assert req.num_computed == req.num_tokens - 1, "append_token() missing after a step"
            assert req.remaining_budget > 0, "request at max_tokens was not finished"
            seqs.append(ScheduledSeq(req, req.row, req.num_computed, [req.output_ids[-1]], [slot]))
            req.slots.append(slot)
            req.num_computed += 1
        return Batch("decode", seqs)

    def _pause_newest(self, need: int) -> None:
        """Preempt the newest running requests until one decode step of the `need` decodable ones
        fits; they go back to the front of `waiting` in arrival order and later recompute."""
        for req in sorted(self.running.values(), key=lambda r: r.arrival, reverse=True):
            if need <= self._num_available():
                break
            need -= not req.is_prefilling
            del self.running[req.request_id]
            self._release(req)
            req.status = RequestStatus.WAITING
            req.num_computed = 0
            req.prefill_len = 0
            req.num_pauses += 1
            self.total_pauses += 1
            self.waiting.appendleft(req)  # newest first, so the oldest ends up in front
        assert need <= self._num_available(), "a lone request always fits (checked in add)"

    def _budget(self, req: Request) -> int:
        """Remaining output tokens assumed by admission (b_i). Exact: the request's own budget, 0 for one
        whose last id is still on the device (it only waits for finish(), `lookahead` steps at most)."""
        if self.optimistic:
            estimate = max(1, math.ceil(self.optimistic_ratio * req.params.max_tokens))
            return max(1, estimate - len(req.output_ids))
        return req.remaining_budget

    def _release(self, req: Request) -> None:
        """Free the request's own slots and row; unlock the prefix-cache path it used."""
        self.slot_allocator.free(req.slots[req.num_cached :])
        if req.cache_node is not None:
            self.cache.unlock(req.cache_node)
        self.row_allocator.free(req.row)
        req.slots = []
        req.row = None
        req.num_cached = 0
        req.cache_node = None

    def _reject_reason(self, req: Request) -> str | None:
        if req.request_id in self._live:
            return "duplicate request_id"
        if req.status is not RequestStatus.WAITING or req.slots or req.row is not None:
            return "request was already scheduled"
        if not req.prompt_ids:
            return "empty prompt"
        if req.remaining_budget < 1:
            return "max_tokens already reached"
        need = req.num_tokens + req.remaining_budget  # within the context: the engine checked (context_problem)
        if need > self.num_slots:
            return f"prompt + max_tokens = {need} exceeds the KV pool of {self.num_slots} slots"
        return None


def _may_share_prefix(req: Request) -> bool:
    """Mean pooling needs every prompt token's hidden state: such a request computes its whole prompt."""
    return req.pooling is None or req.pooling.mode != "mean"


__all__ = ["Batch", "Router", "ScheduledSeq"]
