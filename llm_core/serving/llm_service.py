"""The llm model's logic: queue requests into the engine, stream coalesced responses back.

Threads: Triton's `execute` calls `submit` (parse, register, engine.add_request: never blocks
on generation); ONE sender thread (`run`) drains the engine's shared output queue, groups the
chunks per stream, sends one response per stream per pass (docs/SERVING.md: one response carrying
every token since the stream's previous response, plus the context ids the stateless
postprocess needs) but a stream's next one only `n / max_responses_per_s` after its last, n the
streams producing tokens (`_interval`), polls client cancellation, and publishes metrics. Every request ends with
exactly one final send, errors included; all sends and metric updates happen on that thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_core.detokenizer import DEFAULT_CONTEXT, MAX_CONTEXT, context_window, decode_delta
from llm_core.outputs import StreamChunk
from llm_core.serving.health import HealthWriter
from llm_core.serving.llm_io import LlmRequest, LlmResponse, Transport, parse_llm_request
from llm_core.serving.metrics import EngineMetrics

log = logging.getLogger("llm_core.serving")
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "cancelled", "error": "error"}


@dataclass(slots=True)
class _Stream:
    handle: Any
    request: LlmRequest | None
    arrival: float
    history: list[int] = field(default_factory=list)  # ids before `pending` (prompt tail, then outputs)
    pending: list[int] = field(default_factory=list)
    pending_logprobs: list[float] = field(default_factory=list)
    cum_log_prob: float = 0.0
    finish_reason: str | None = None
    text_trim: int = 0
    error: str | None = None
    retryable: bool = False  # the error is "engine unavailable": UNAVAILABLE (503), not a bad request
    last_token_time: float | None = None
    ttft: float | None = None  # measured, not yet observed
    itl_sum: float = 0.0  # token gaps since the last response, not yet observed
    itl_tokens: int = 0
    num_responses: int = 0
    last_sent: float = 0.0  # when its last response went out
    cancelled: bool = False  # the client is gone: end with a bare final flag

    @property
    def streaming(self) -> bool:
        return self.request is not None and self.request.stream


class LlmService:
    def __init__(
        self,
        engine: Any,
        transport: Transport,
        metrics: EngineMetrics,
        default_max_tokens: int = 16,
        cancel_poll_s: float = 0.2,
        stats_interval_s: float = 0.25,
        health: HealthWriter | None = None,
        max_responses_per_s: float = 1500.0,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.metrics = metrics
        self.default_max_tokens = default_max_tokens
        self.cancel_poll_s = cancel_poll_s
        self.stats_interval_s = stats_interval_s
        self.max_responses_per_s = max_responses_per_s
        self._next_due: float | None = None  # when the earliest held-back stream may send again
        self._producing = 0  # streamed requests that have tokens and have not ended: they share the rate
        self.health = health
        self.tokenizer = getattr(engine, "tokenizer", None)
        self.outputs: queue.Queue = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        self._dirty: dict[str, None] = {}  # streams with news since their last response, in order
        self._thread = threading.Thread(target=self.run, name="llm-sender", daemon=True)
        self._stopping = False
        self.max_itl_per_tick = max(1, int(1000 * stats_interval_s))  # ~1000 ITL observations/s
        self._itl_budget = self.max_itl_per_tick

    # --- any thread ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, handle: Any, inputs: Mapping[str, np.ndarray]) -> str:
        """Queue one request; never raises (failures become the request's error response)."""
        request_id = f"llm-{uuid.uuid4().hex}"
        state = _Stream(handle, None, time.monotonic())
        with self._lock:
            self._streams[request_id] = state
        try:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            req = parse_llm_request(inputs, self.default_max_tokens)
            state.request = req
            state.history = req.prompt_ids[-MAX_CONTEXT:]
            self.engine.add_request(
                req.prompt_ids, req.params, req.image_embeds, request_id=request_id, output_queue=self.outputs
            )
        except Exception as exc:  # noqa: BLE001 - every failure must reach the client
            if not isinstance(exc, (ValueError, RuntimeError)):
                log.exception("request %s failed", request_id)
            retryable = bool(getattr(exc, "retryable", False))
            self.outputs.put(
                StreamChunk(request_id, [], "error", error=str(exc) or type(exc).__name__, retryable=retryable)
            )
        return request_id

    def abort(self, request_id: str) -> None:
        """Cancellation relayed from postprocess (ensemble) or the adapter."""
        self.engine.abort(request_id)

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (call after engine.shutdown(), which ends every request), then stop."""
        self._stopping = True
        self.outputs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def num_streams(self) -> int:
        return len(self._streams)

    # --- the sender thread ---------------------------------------------------------------
    def run(self) -> None:
        next_cancel_poll = next_stats = 0.0
        while True:
            timeout = min(self.cancel_poll_s, self.stats_interval_s)
            if self._next_due is not None:  # a held-back stream: wake when it may send
                timeout = min(timeout, max(0.0, self._next_due - time.monotonic()))
            chunks, stop = self._take(timeout=timeout)
            for chunk in chunks:
                self._on_chunk(chunk)
            self._flush()
            now = time.monotonic()
            if stop:
                self._fail_remaining("the server is shutting down")
                return
            if now >= next_cancel_poll:
                self._poll_cancelled()
                next_cancel_poll = now + self.cancel_poll_s
            if now >= next_stats:
                self._publish_stats()
                next_stats = now + self.stats_interval_s

    def _take(self, timeout: float) -> tuple[list[StreamChunk], bool]:
        try:
            first = self.outputs.get(timeout=timeout)
        except queue.Empty:
            return [], False
        chunks = [first]
        while True:
            try:
                chunks.append(self.outputs.get_nowait())
            except queue.Empty:
                break
        if None in chunks:
            return [c for c in chunks if c is not None], True
        return chunks, False

    def _on_chunk(self, chunk: StreamChunk) -> None:
        state = self._streams.get(chunk.request_id)
        if state is None or state.finish_reason is not None:
            return
        when = chunk.time or time.monotonic()
        if chunk.token_ids:
            if state.last_token_time is None:
                state.ttft = when - state.arrival
                if state.streaming:
                    self._producing += 1
            else:
                state.itl_sum += when - state.last_token_time
                state.itl_tokens += len(chunk.token_ids)
            state.last_token_time = when
            state.pending.extend(chunk.token_ids)
            if chunk.logprobs:
                state.pending_logprobs.extend(chunk.logprobs)
                state.cum_log_prob += float(sum(chunk.logprobs))
        if chunk.finish_reason is not None:
            state.finish_reason = FINISH_REASONS.get(chunk.finish_reason, chunk.finish_reason)
            state.text_trim = chunk.text_trim
            state.error = chunk.error
            state.retryable = chunk.retryable
        self._dirty[chunk.request_id] = None

    def _context(self, history: list[int]) -> list[int]:
        if self.tokenizer is None:
            return history[-DEFAULT_CONTEXT:]
        return context_window(self.tokenizer, history)

    def _interval(self) -> float:
        """The least time between two responses of one stream (its first and last excepted): every stream
        producing tokens may have one response per interval, at most `max_responses_per_s` in all (requests
        still waiting for admission do not count). Each response costs a trip through tritonserver and the
        postprocess step, ONE Python stub that takes ~2,000 responses/s on the H200 host: past that its
        queue grows (1.8 s per response at 256 streams, W1) and every stream's tokens, first ones included,
        wait in it. Held back here instead, tokens merge into fewer responses of several tokens each, and
        the queue stays empty."""
        if self.max_responses_per_s <= 0:
            return 0.0
        return self._producing / self.max_responses_per_s

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        now, interval = time.monotonic(), self._interval()
        self._next_due = None
        for request_id in dirty:
            state = self._streams.get(request_id)
            if state is None:
                continue
            final = state.finish_reason is not None
            if not final and (state.cancelled or not (state.streaming and state.pending)):
                continue
            due = state.last_sent + interval
            if not final and state.num_responses and now < due:  # keep its tokens for a later response
                self._dirty[request_id] = None
                self._next_due = due if self._next_due is None else min(self._next_due, due)
                continue
            context = self._context(state.history)
            text = self._text(context, state, final)
            if not final and text == "":
                continue  # only an incomplete character so far: never send an empty text chunk
            try:
                self._send(request_id, state, context, text or "", final)
            except Exception:  # noqa: BLE001 - a dead client must not stop the other streams
                log.exception("sending a response of %s failed", request_id)
                if not final:
                    self.engine.abort(request_id)
                final = True
            if final:
                with self._lock:
                    self._streams.pop(request_id, None)
                if state.streaming and state.last_token_time is not None:
                    self._producing -= 1

    def _text(self, context: list[int], state: _Stream, final: bool) -> str | None:
        """The text the pending ids add after `context`, less `text_trim` at the end: where served text
        is made (postprocess only assembles the outputs). None without a tokenizer."""
        if self.tokenizer is None:
            return None
        text = decode_delta(self.tokenizer, context, state.pending, final)
        if final and state.text_trim:
            text = text[: max(len(text) - state.text_trim, 0)]
        return text

    def _send(self, request_id: str, state: _Stream, context: list[int], text: str, final: bool) -> None:
        if final and state.finish_reason == "error":
            self.transport.send_error(state.handle, state.error or "generation failed", state.retryable)
            return
        if final and state.cancelled:
            self.transport.send(state.handle, None, True)
            return
        req = state.request
        logprobs = state.pending_logprobs if req.params.logprobs else None
        response = LlmResponse(
            request_id,
            state.pending,
            context,
            text,
            state.finish_reason or "",
            state.text_trim,
            len(req.prompt_ids),
            state.num_responses,
            req.options,
            logprobs,
            state.cum_log_prob,
        )
        state.history = (state.history + state.pending)[-MAX_CONTEXT:]
        state.pending, state.pending_logprobs = [], []
        state.num_responses += 1
        state.last_sent = time.monotonic()
        self.transport.send(state.handle, response, final)
        self._observe_latencies(state)

    def _observe_latencies(self, state: _Stream) -> None:
        """One TTFT per request; one ITL per response (the mean gap of the tokens it carries), at
        most `max_itl_per_tick` per stats tick: each observation is a blocking round trip to the
        server (~40 us, GIL held), as costly as a third of a response."""
        if state.ttft is not None:
            self.metrics.observe_ttft(state.ttft)
            state.ttft = None
        if state.itl_tokens and self._itl_budget > 0:
            self._itl_budget -= 1
            self.metrics.observe_itl(state.itl_sum / state.itl_tokens)
        state.itl_sum, state.itl_tokens = 0.0, 0

    def _poll_cancelled(self) -> None:
        # Ensemble requests never see is_cancelled() in 2.51; postprocess relays their
        # cancellation instead, so skip the round trips for them.
        with self._lock:
            live = [
                (rid, s)
                for rid, s in self._streams.items()
                if not s.cancelled and s.finish_reason is None and s.request is not None and not s.request.from_ensemble
            ]
        for request_id, state in live:
            try:
                cancelled = self.transport.is_cancelled(state.handle)
            except Exception:  # noqa: BLE001
                cancelled = True
            if cancelled:
                state.cancelled = True
                self.engine.abort(request_id)

    def _publish_stats(self) -> None:
        self._itl_budget = self.max_itl_per_tick
        try:
            state = getattr(self.engine, "state", "ready")
            if self.health is not None and self.health.update(state, getattr(self.engine, "state_reason", "")):
                log.warning("llm engine state: %s", state)
            self.metrics.publish({**self.engine.stats(), "engine_ready": float(state == "ready")})
        except Exception:  # noqa: BLE001 - metrics must never stop the sender
            log.exception("publishing engine metrics failed")

    def _fail_remaining(self, message: str) -> None:
        with self._lock:
            remaining = list(self._streams.items())
            self._streams.clear()
        for _, state in remaining:
            try:
                self.transport.send_error(state.handle, message, True)
            except Exception:  # noqa: BLE001
                pass
