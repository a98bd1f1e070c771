"""Public API: Engine starts the worker processes and streams their outputs back.

Threads in the caller's process: the caller's own, and one reader thread that receives each
step's chunks from rank 0 and routes them to per-request queues. All GPU/CPU model work and
the scheduling loop run in the worker processes.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from llm_core.config import EngineConfig
from llm_core.detokenizer import full_text, load_tokenizer_in_background
from llm_core.engine_embed import embed_prompts
from llm_core.engine_recovery import MAX_RESUMES, Inflight, resume_command
from llm_core.engine_workers import EngineDeadError, EngineUnavailableError, Workers, check_not_bootstrapping
from llm_core.models import load_model_config
from llm_core.outputs import RequestOutput, StreamChunk
from llm_core.pooling_params import PoolingParams
from llm_core.request_checks import check_generate_args, check_request
from llm_core.sampling_params import SamplingParams
from llm_core.worker.scheduler_loop import AddCommand

log = logging.getLogger("llm_core")
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)  # between failed restart attempts (the last repeats)


class Engine:
    """Public API. States: "ready"; "restarting" (a worker died: new requests wait, in-flight
    ones resume when the workers are back); "down" (a restart failed: requests are refused with
    EngineUnavailableError until a later attempt succeeds)."""

    def __init__(self, config: EngineConfig) -> None:
        check_not_bootstrapping()
        self.config = config
        self.model_config = load_model_config(config.model_dir)
        self.max_model_len = config.max_model_len or self.model_config.max_position_embeddings
        tokenizer = load_tokenizer_in_background(config.model_dir)  # while the workers start
        self._queues: dict[str, queue.Queue] = {}
        self._inflight: dict[str, Inflight] = {}  # same keys as _queues
        self._lock = threading.Lock()  # _queues, _inflight
        self._send_lock = threading.Lock()  # the workers' pipe, _workers and _state
        self._stats: dict = {}
        self._closed = False
        self.state, self.state_reason = "ready", ""
        self._ids = itertools.count()
        self._workers = Workers(config)
        try:
            self.tokenizer = tokenizer.result()
        except BaseException:
            self._workers.kill()
            raise
        self.num_slots = self._workers.num_slots
        self.restarts = 0
        self.resumed_requests = 0
        self._reader = threading.Thread(target=self._read_loop, name="llm_core-reader", daemon=True)
        self._reader.start()

    # --- requests ------------------------------------------------------------------------
    def add_request(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        image_embeds: torch.Tensor | np.ndarray | None = None,
        request_id: str | None = None,
        output_queue: queue.Queue | None = None,
        pooling: PoolingParams | None = None,
    ) -> str:
        """Queue a request; its StreamChunks go to `output_queue`. Raises ValueError when the
        request can never run (the message names the offending field), EngineUnavailableError
        when the engine is down (retry later). While the workers restart it waits in the queue.
        `pooling`: an embedding request (see embed()); its one chunk carries `embedding`."""
        if self._closed:
            raise EngineDeadError("engine is shut down")
        prompt_ids = list(map(int, prompt_ids))
        embeds = check_request(self.model_config, self.max_model_len, prompt_ids, params, image_embeds)
        request_id = request_id or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        command = AddCommand(request_id, prompt_ids, params, embeds, pooling)
        with self._send_lock:
            if self.state == "down":
                raise EngineUnavailableError(f"engine unavailable ({self.state_reason}); retry in a few seconds")
            with self._lock:
                if request_id in self._queues:
                    raise ValueError(f"request_id {request_id!r} is already in flight")
                self._queues[request_id] = output_queue if output_queue is not None else queue.Queue()
                self._inflight[request_id] = Inflight(command)
            if self.state == "ready":
                self._send_or_defer(("add", command))
        return request_id

    def abort(self, request_id: str) -> None:
        with self._send_lock:
            with self._lock:
                inflight = self._inflight.get(request_id)
                if inflight is None:
                    return
                inflight.aborted = True  # if the workers are down, the restart ends it
            if self.state == "ready":
                self._send_or_defer(("abort", request_id))

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams, image_embeds=None) -> Iterator[StreamChunk]:
        q: queue.Queue = queue.Queue()
        request_id = self.add_request(prompt_ids, params, image_embeds, output_queue=q)
        finished = False
        try:
            while not finished:
                chunk = q.get()
                finished = chunk.finished
                yield chunk
        finally:
            if not finished:
                self.abort(request_id)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams],
        image_embeds: Sequence | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion. All prompts are checked before any is queued."""
        params_list, embeds_list = check_generate_args(prompts, params, image_embeds)
        for prompt, sp, embeds in zip(prompts, params_list, embeds_list, strict=True):
            check_request(self.model_config, self.max_model_len, [int(t) for t in prompt], sp, embeds)
        q: queue.Queue = queue.Queue()
        ids = []
        try:
            for p, sp, e in zip(prompts, params_list, embeds_list, strict=True):
                ids.append(self.add_request(p, sp, e, output_queue=q))
            chunks = self._wait_all(q, ids)
        except BaseException:  # e.g. KeyboardInterrupt: do not leave the others running
            for request_id in ids:
                self.abort(request_id)
            raise
        return [self._collect(rid, chunks[rid], prompt) for rid, prompt in zip(ids, prompts, strict=True)]

    def embed(self, prompts: Sequence[Sequence[int]], pooling: str = "last", normalize: bool = True) -> np.ndarray:
        """[N, hidden] fp32: each prompt's final normed hidden state, of its last token or the mean over its
        tokens (`pooling`), L2-normalized unless `normalize` is False. Prefill-only requests through the
        same router and KV pool as generation; they hold no KV once done (llm_core/engine_embed.py)."""
        return embed_prompts(self, prompts, PoolingParams(pooling, normalize))

    @staticmethod
    def _wait_all(q: queue.Queue, ids: list[str]) -> dict[str, list[StreamChunk]]:
        chunks: dict[str, list[StreamChunk]] = {rid: [] for rid in ids}
        remaining = len(ids)
        while remaining:
            chunk = q.get()
            chunks[chunk.request_id].append(chunk)
            remaining -= chunk.finished
        return chunks

    def _collect(self, request_id: str, chunks: list[StreamChunk], prompt_ids) -> RequestOutput:
        token_ids = [t for c in chunks for t in c.token_ids]
        logprobs = [lp for c in chunks for lp in (c.logprobs or [])] or None
        last = chunks[-1]
        text = None
        if self.tokenizer is not None:
            text = full_text(self.tokenizer, list(prompt_ids), token_ids)
            if last.text_trim:
                text = text[: len(text) - last.text_trim]
        return RequestOutput(request_id, token_ids, last.finish_reason, len(prompt_ids), text, logprobs, last.error)

    # --- plumbing ------------------------------------------------------------------------
    def _send_or_defer(self, message) -> None:
        """Send to rank 0 (caller holds _send_lock). A dead pipe is not an error here: the reader
        thread notices the dead worker and the restart re-sends every unfinished request."""
        try:
            self._workers.conn.send(message)
        except (OSError, EOFError, ValueError):
            pass

    def _deliver(self, chunk: StreamChunk) -> None:
        with self._lock:
            q = self._queues.get(chunk.request_id)
            inflight = self._inflight.get(chunk.request_id)
            if inflight is not None:
                inflight.delivered.extend(chunk.token_ids)
                chunk.num_prompt_tokens = inflight.num_prompt_tokens  # not the resumed prompt's
            if q is not None and chunk.finished:
                del self._queues[chunk.request_id]
                self._inflight.pop(chunk.request_id, None)
        if q is not None:
            q.put(chunk)

    def _end(self, request_id: str, reason: str, error: str | None, retryable: bool = False) -> None:
        self._deliver(StreamChunk(request_id, [], reason, error=error, time=time.monotonic(), retryable=retryable))

    def _read_loop(self) -> None:
        while not self._closed:
            workers = self._workers
            try:
                if not workers.conn.poll(0.2):
                    if not workers.alive():
                        if self._closed:  # shutting down: the workers are meant to exit
                            break
                        self._recover(f"a worker process died (exit codes by rank: {workers.exit_codes()})")
                    continue
                message = workers.conn.recv()
            except (OSError, EOFError):
                if not self._closed:
                    self._recover("lost the connection to worker rank 0")
                continue
            self._on_message(message)

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == "outputs":
            for chunk in message[1]:
                self._deliver(chunk)
            self._stats = message[2]
        elif kind == "stats":
            self._stats = message[1]
        elif kind == "fatal":
            log.error("worker rank %s failed:\n%s", message[1], message[2])
            self._recover(f"worker rank {message[1]} failed: {message[2].strip().splitlines()[-1]}")

    def _recover(self, reason: str) -> None:
        """Restart the workers, then resume every unfinished request on them. Requests added
        meanwhile wait; if a restart attempt fails they all end with a retryable error."""
        log.error("llm_core: %s; restarting the workers (in-flight requests will resume)", reason)
        with self._send_lock:
            self.state, self.state_reason = "restarting", reason
        self._workers.kill()
        attempt = 0
        while not self._closed:
            try:
                workers = Workers(self.config)
            except EngineDeadError as exc:
                self._restart_failed(exc, attempt)
                attempt += 1
                continue
            self._install(workers)
            return

    def _restart_failed(self, exc: EngineDeadError, attempt: int) -> None:
        log.error("llm_core: restart failed: %s", exc)
        with self._send_lock:
            self.state, self.state_reason = "down", f"restart failed: {str(exc).splitlines()[0]}"
            with self._lock:
                pending = list(self._inflight)
        for request_id in pending:
            self._end(request_id, "error", f"engine unavailable ({self.state_reason}); retry later", retryable=True)
        time.sleep(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])

    def _install(self, workers: Workers) -> None:
        with self._send_lock:
            if self._closed:  # shut down while these were starting: nobody will stop them
                workers.kill()
                return
            self._workers = workers
            self._stats = {}
            with self._lock:
                pending = list(self._inflight.values())
            for inflight in pending:
                self._resume(inflight)
            self.restarts += 1
            self.state, self.state_reason = "ready", ""
        log.warning("llm_core: workers restarted; %d request(s) resumed or re-queued", len(pending))

    def _resume(self, inflight: Inflight) -> None:
        request_id = inflight.command.request_id
        if inflight.aborted:
            self._end(request_id, "abort", None)
        elif inflight.resumes >= MAX_RESUMES:
            self._end(request_id, "error", f"engine failure: the workers died {MAX_RESUMES + 1} times during it")
        else:
            inflight.resumes += 1
            self.resumed_requests += 1
            self._send_or_defer(("add", resume_command(inflight)))

    def stats(self) -> dict:
        stats = dict(self._stats)
        stats.setdefault("slots_total", self.num_slots)
        stats.setdefault("slots_used", 0)
        stats["restarts"] = self.restarts
        stats["resumed_requests"] = self.resumed_requests
        return stats

    def worker_pids(self) -> list[int]:
        return self._workers.pids()

    @property
    def closed(self) -> bool:
        """shutdown() was called."""
        return self._closed

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._send_lock:  # a restart that is installing new workers finishes first
            workers = self._workers
        workers.stop()
        self._reader.join(timeout=5)
        with self._lock:
            pending = list(self._queues.items())
            self._queues.clear()
            self._inflight.clear()
        for request_id, q in pending:
            q.put(StreamChunk(request_id, [], "abort", error="engine shut down"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __del__(self) -> None:
        if hasattr(self, "_workers") and not self._closed:
            self.shutdown()
