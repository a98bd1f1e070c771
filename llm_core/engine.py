"""Public API: Engine starts the worker processes and streams their outputs back.

Threads in the caller's process: the caller's own, and one reader thread that receives each
step's chunks from rank 0 and routes them to per-request queues. All GPU/CPU model work and
the scheduling loop run in the worker processes.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from llm_core.config import EngineConfig
from llm_core.detokenizer import full_text, load_tokenizer_in_background
from llm_core.models import load_model_config
from llm_core.outputs import RequestOutput, StreamChunk
from llm_core.sampling_params import SamplingParams
from llm_core.worker.process import worker_main
from llm_core.worker.scheduler_loop import AddCommand

log = logging.getLogger("llm_core")


class EngineDeadError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Workers:
    """The worker processes of one engine generation (restarted together)."""

    def __init__(self, cfg: EngineConfig) -> None:
        ctx = mp.get_context("spawn")
        if cfg.tp > 1:
            cfg = replace(cfg, dist_port=cfg.dist_port or _free_port())
        self.conns = []
        self.procs = []
        for rank in range(cfg.tp):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(rank, cfg, theirs, os.getpid()), daemon=True, name=f"llm_core-rank{rank}"
            )
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)
        self.conn = self.conns[0]
        self.start_timeout_s = cfg.start_timeout_s
        self._kill_lock = threading.Lock()
        self._killed = False
        self.num_slots = self._wait_ready()

    def _wait_ready(self) -> int:
        deadline = time.monotonic() + self.start_timeout_s
        slots = 0
        for rank, conn in enumerate(self.conns):
            while not conn.poll(0.2):
                if not self.procs[rank].is_alive() or time.monotonic() > deadline:
                    self.kill()
                    raise EngineDeadError(f"worker rank {rank} failed to start")
            try:
                message = conn.recv()
            except EOFError:
                message = ("fatal", rank, "the worker process exited during start-up")
            if message[0] == "fatal":
                self.kill()
                raise EngineDeadError(f"worker rank {message[1]} failed to start:\n{message[2]}")
            slots = message[2]
        return slots

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def exit_codes(self) -> list[int | None]:
        return [p.exitcode for p in self.procs]

    def kill(self) -> None:
        """Idempotent: the reader thread (recovery) and shutdown may both get here."""
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(timeout=5)
        for conn in self.conns:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self.conn.send(("shutdown",))
        except (OSError, EOFError):
            pass
        for proc in self.procs:
            proc.join(timeout=timeout)
        self.kill()


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config = load_model_config(config.model_dir)
        self.max_model_len = config.max_model_len or self.model_config.max_position_embeddings
        tokenizer = load_tokenizer_in_background(config.model_dir)  # while the workers start
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stats: dict = {}
        self._closed = False
        self._restarting = False
        self._ids = itertools.count()
        self._workers = _Workers(config)
        try:
            self.tokenizer = tokenizer.result()
        except BaseException:
            self._workers.kill()
            raise
        self.num_slots = self._workers.num_slots
        self.restarts = 0
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
    ) -> str:
        """Queue a request; its StreamChunks go to `output_queue`. Raises ValueError when the
        request can never run (the message names the offending field)."""
        if self._closed:
            raise EngineDeadError("engine is shut down")
        if self._restarting:
            raise EngineDeadError("engine workers are restarting after a failure; retry shortly")
        prompt_ids = [int(t) for t in prompt_ids]
        embeds = self._check_request(prompt_ids, params, image_embeds)
        request_id = request_id or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            if request_id in self._queues:
                raise ValueError(f"request_id {request_id!r} is already in flight")
            self._queues[request_id] = output_queue if output_queue is not None else queue.Queue()
        try:
            self._send(("add", AddCommand(request_id, prompt_ids, params, embeds)))
        except (OSError, EOFError):
            self._deliver(StreamChunk(request_id, [], "error", error="engine workers are restarting"))
        return request_id

    def _check_request(self, prompt_ids: list[int], params: SamplingParams, image_embeds) -> np.ndarray | None:
        if not prompt_ids:
            raise ValueError("prompt is empty")
        vocab = self.model_config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        total = len(prompt_ids) + params.max_tokens
        if len(prompt_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens; the model's context is {self.max_model_len}")
        if total > self.max_model_len:
            raise ValueError(
                f"max_tokens ({params.max_tokens}) + prompt ({len(prompt_ids)} tokens) exceeds "
                f"the model's context ({self.max_model_len})"
            )
        image_token = self.model_config.image_token_index
        num_image_tokens = sum(1 for t in prompt_ids if t == image_token) if image_token is not None else 0
        if image_embeds is None:
            if num_image_tokens:
                raise ValueError(f"prompt has {num_image_tokens} image tokens but no image embeddings")
            return None
        embeds = image_embeds.detach().float().cpu().numpy() if isinstance(image_embeds, torch.Tensor) else image_embeds
        embeds = np.ascontiguousarray(embeds, dtype=np.float32)
        if embeds.ndim != 2 or embeds.shape[1] != self.model_config.hidden_size:
            raise ValueError(f"image_embeds must be [N, {self.model_config.hidden_size}], got {list(embeds.shape)}")
        if embeds.shape[0] != num_image_tokens:
            raise ValueError(
                f"image_embeds has {embeds.shape[0]} rows but the prompt has {num_image_tokens} image tokens"
            )
        return embeds

    def abort(self, request_id: str) -> None:
        with self._lock:
            if request_id not in self._queues:
                return
        try:
            self._send(("abort", request_id))
        except (OSError, EOFError):
            pass

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
        params_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        embeds_list = list(image_embeds) if image_embeds is not None else [None] * len(prompts)
        q: queue.Queue = queue.Queue()
        ids = [
            self.add_request(p, sp, e, output_queue=q)
            for p, sp, e in zip(prompts, params_list, embeds_list, strict=True)
        ]
        chunks: dict[str, list[StreamChunk]] = {rid: [] for rid in ids}
        remaining = len(ids)
        while remaining:
            chunk = q.get()
            chunks[chunk.request_id].append(chunk)
            remaining -= chunk.finished
        return [self._collect(rid, chunks[rid], prompt) for rid, prompt in zip(ids, prompts, strict=True)]

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
    def _send(self, message) -> None:
        with self._send_lock:
            self._workers.conn.send(message)

    def _deliver(self, chunk: StreamChunk) -> None:
        with self._lock:
            q = self._queues.get(chunk.request_id)
            if q is not None and chunk.finished:
                del self._queues[chunk.request_id]
        if q is not None:
            q.put(chunk)

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
        """Fail every in-flight request, then restart the workers."""
        log.error("llm_core: %s; failing in-flight requests and restarting workers", reason)
        self._restarting = True
        self._workers.kill()
        with self._lock:
            pending = list(self._queues.items())
            self._queues.clear()
        for request_id, q in pending:
            q.put(StreamChunk(request_id, [], "error", error=f"engine failure: {reason}", time=time.monotonic()))
        while not self._closed:
            try:
                workers = _Workers(self.config)
                with self._send_lock:
                    if self._closed:  # shut down while these were starting: nobody will stop them
                        workers.kill()
                        return
                    self._workers = workers
                self.restarts += 1
                self._stats = {}
                self._restarting = False
                return
            except EngineDeadError as exc:
                log.error("llm_core: restart failed: %s", exc)
                time.sleep(1.0)

    def stats(self) -> dict:
        stats = dict(self._stats)
        stats.setdefault("slots_total", self.num_slots)
        stats.setdefault("slots_used", 0)
        stats["restarts"] = self.restarts
        return stats

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers.procs]

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
        for request_id, q in pending:
            q.put(StreamChunk(request_id, [], "abort", error="engine shut down"))

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __del__(self) -> None:
        if hasattr(self, "_workers") and not self._closed:
            self.shutdown()
