"""The rank-0 hot loop: take commands, schedule, run, sample, stop, report.

Runs inside the rank-0 worker process, so the caller's GIL (Triton's response sending) is
never held by it. One message per step goes back to the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llm_core.batch import SeqInput, StepInput, TokenFeed
from llm_core.detokenizer import StopStringChecker
from llm_core.outputs import StreamChunk
from llm_core.pooling_params import PoolingParams
from llm_core.sampling import PenaltyCounts, Sampler, SamplingInput
from llm_core.sampling.sampler import to_device
from llm_core.scheduler import Request, Router
from llm_core.scheduler.prefix_cache import image_cache_keys
from llm_core.scheduler.router import Batch
from llm_core.worker.model_runner import ModelRunner
from llm_core.worker.pooling import EmbeddingPooler
from llm_core.worker.timeline import GpuSpan, StepTimeline

# An output id the host has not seen yet: sampled by a step still queued on the device.
PLACEHOLDER = -1


@dataclass(slots=True)
class AddCommand:
    request_id: str
    prompt_ids: list[int]
    params: object  # SamplingParams
    image_embeds: object | None = None  # np.ndarray [N, hidden]
    pooling: PoolingParams | None = None  # an embedding request: pooled hidden state instead of tokens


@dataclass(slots=True)
class _Tracked:
    """Per-request state the loop keeps beside the router's Request."""

    request: Request
    generator: torch.Generator | None
    stop_checker: StopStringChecker | None
    pending_logprobs: list[float] = field(default_factory=list)  # of sampled, unsent tokens
    penalty_counts: PenaltyCounts | None = None  # device token counts, for requests with penalties


@dataclass(slots=True)
class _Launched:
    """A step queued on the device whose sampled ids the host has not read yet."""

    kind: str
    gpu: GpuSpan | None
    sampled: list[tuple[Request, int]] = field(default_factory=list)  # (request, index in its output_ids)
    row_of: dict[str, int] = field(default_factory=dict)  # request_id -> its row of device_ids
    device_ids: torch.Tensor | None = None  # [S] int64 on the device
    host_ids: torch.Tensor | None = None  # [S] int64, filled by a non-blocking copy
    host_logprobs: torch.Tensor | None = None  # [S] fp32, likewise
    copied: torch.cuda.Event | None = None  # both copies are done
    needs_sync: bool = False  # a row has penalties: its ids are needed before the next step is sampled
    pooled: list[tuple[Request, torch.Tensor]] = field(default_factory=list)  # embeddings, [hidden] fp32 host


class SchedulerLoop:
    def __init__(
        self,
        runner: ModelRunner,
        router: Router,
        tokenizer,
        send: Callable,
        broadcast: Callable | None = None,
        overlap: bool = False,
    ):
        self.runner = runner
        self.router = router
        self.tokenizer = tokenizer
        self.send = send  # send(message) to the engine
        self.broadcast = broadcast  # broadcast(step) to ranks > 0 (collectives.broadcast_step); None at tp=1
        self.sampler = Sampler(seed=runner.cfg.seed)
        self.eos_ids = tuple(runner.model_config.eos_token_ids)
        self.tracked: dict[str, _Tracked] = {}
        self.counters = {"prompt_tokens_total": 0, "generation_tokens_total": 0, "requests_finished": 0}
        self.startup = {"warmup_s": round(runner.warmup_s, 3)}
        if runner.graph_runner is not None:
            self.startup["cuda_graphs"], self.startup["prefill_graph_pieces"] = runner.num_graphs()
        self.dirty = True  # stats changed since last report
        self.timeline = StepTimeline(runner.device)
        self.overlap = overlap  # queue step N+1 before reading step N's ids (see step())
        self.launched: _Launched | None = None
        self.pooler = EmbeddingPooler()

    # --- commands ------------------------------------------------------------------------
    def add(self, cmd: AddCommand) -> None:
        req = Request(
            request_id=cmd.request_id,
            prompt_ids=list(cmd.prompt_ids),
            params=cmd.params,
            image_embeds=cmd.image_embeds,
            pooling=cmd.pooling,
        )
        if cmd.image_embeds is not None:
            req.prompt_keys = image_cache_keys(
                req.prompt_ids, cmd.image_embeds, self.runner.image_token_index,
                self.runner.model_config.num_image_tokens,
            )  # fmt: skip
        try:
            self.router.add(req)
        except ValueError as exc:
            self.send(("outputs", [self._chunk_error(cmd.request_id, str(exc))], self.stats()))
            return
        params = cmd.params
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.runner.device).manual_seed(params.seed)
        checker = None
        if params.stop and self.tokenizer is not None:
            checker = StopStringChecker(self.tokenizer, params.stop, req.prompt_ids)
        counts = PenaltyCounts() if params.needs_penalties else None
        self.tracked[cmd.request_id] = _Tracked(req, generator, checker, penalty_counts=counts)
        self.counters["prompt_tokens_total"] += len(req.prompt_ids)
        self.dirty = True

    def abort(self, request_id: str) -> None:
        req = self.router.abort(request_id)
        tracked = self.tracked.pop(request_id, None)
        self.pooler.drop(request_id)
        if req is None and tracked is None:
            return
        self.dirty = True
        self.send(("outputs", [StreamChunk(request_id, [], "abort", time=time.monotonic())], self.stats()))

    def has_work(self) -> bool:
        return bool(self.tracked) or self.launched is not None

    # --- one iteration ---------------------------------------------------------------------
    def step(self) -> None:
        """Schedule and queue the next step on the device, then finish the step queued before it.

        With `overlap`, the device runs step N while the host schedules and queues step N+1: the ids
        sampled by N stay on the device and are fed into N+1's inputs (`TokenFeed`); the host appends
        a PLACEHOLDER for each and fills it in when N's ids come back, after N+1 is queued. A request
        that N finishes (eos, stop) has been scheduled into N+1 too: its extra token is dropped. Requests
        whose rows need penalties are finished before the next step is scheduled (their counts need
        the ids). Without `overlap` every step is finished before the next is scheduled.
        """
        timeline = self.timeline
        timeline.begin()
        prev, self.launched = self.launched, None
        chunks: list[StreamChunk] = []
        done: _Launched | None = None
        if prev is not None and prev.needs_sync:
            chunks += self._complete(prev)
            done, prev = prev, None
        batch = self.router.schedule()
        if batch is None:
            if prev is not None:
                chunks += self._complete(prev)
                done = prev
            if done is None:
                if self.dirty:
                    self.send(("stats", self.stats()))
                    self.dirty = False
                return
            self.send(("outputs", chunks, self.stats()))
            timeline.mark("output")
            timeline.end("drain", 0, 0, busy=self.has_work(), gpu=done.gpu, gpu_kind=done.kind)
            return
        seqs = [self._seq_input(seq) for seq in batch.seqs]
        step = StepInput(is_prefill=batch.is_prefill, seqs=seqs, num_decode=batch.num_decode)
        feed = self._feed(batch, prev)
        timeline.mark("schedule")
        if self.broadcast is not None:
            self.broadcast(step)
        launched = self._launch(batch, step, feed)
        timeline.mark("launch")
        if prev is not None:
            chunks += self._complete(prev)
            done = prev
        if self.overlap:
            self.launched = launched
        else:
            chunks += self._complete(launched)
            done = launched
        self.dirty = False
        self.send(("outputs", chunks, self.stats()))
        timeline.mark("output")
        gpu, gpu_kind = (done.gpu, done.kind) if done is not None else (None, batch.kind)
        timeline.end(batch.kind, len(step.seqs), batch.num_tokens, busy=self.has_work(), gpu=gpu, gpu_kind=gpu_kind)

    def _launch(self, batch: Batch, step: StepInput, feed: TokenFeed | None) -> _Launched:
        """Queue the forward and the sampling of `batch` on the device and a copy of the ids to the host."""
        device = self.runner.device
        gpu = self.timeline.gpu_span()
        if gpu is not None:
            gpu.start.record()
        logits, hidden = self.runner.forward_with_hidden(step, feed)
        rows = [i for i, seq in enumerate(batch.seqs) if seq.samples]  # a prompt's last chunk, or decode
        launched = _Launched(batch.kind, gpu)
        if hidden is not None:  # the step holds embedding requests: they are pooled, not sampled
            rows = [i for i in rows if batch.seqs[i].request.pooling is None]
            for pooled in self.pooler.pool(step, [seq.request for seq in batch.seqs], hidden):
                launched.pooled.append((pooled.request, pooled.vector.to("cpu", non_blocking=True)))
        if rows:
            if len(rows) < len(batch.seqs):
                logits = logits.index_select(0, to_device(rows, torch.int64, device))
            reqs = [batch.seqs[i].request for i in rows]
            result = self.sampler.sample(logits, [self._sampling_input(req) for req in reqs])
            launched.device_ids = result.token_ids
            launched.host_ids = result.token_ids.to("cpu", non_blocking=True)  # pinned on CUDA
            if result.logprobs is not None:
                launched.host_logprobs = result.logprobs.to("cpu", non_blocking=True)
            for i, req in enumerate(reqs):
                launched.sampled.append((req, len(req.output_ids)))
                launched.row_of[req.request_id] = i
                self.router.append_token(req, PLACEHOLDER)
                launched.needs_sync |= req.params.needs_penalties
        if device.type == "cuda" and (rows or launched.pooled):
            launched.copied = torch.cuda.Event()
            launched.copied.record()
        if gpu is not None:
            gpu.stop.record()
        return launched

    def _feed(self, batch: Batch, prev: _Launched | None) -> TokenFeed | None:
        """Where `batch` takes an id that `prev` sampled and the host has not seen (decode rows)."""
        if prev is None or not prev.row_of:
            return None
        positions: list[int] = []
        rows: list[int] = []
        offset = 0
        for seq in batch.seqs:
            if seq.new_token_ids[-1] == PLACEHOLDER:
                assert len(seq.new_token_ids) == 1, "only a decode row starts from an unseen id"
                positions.append(offset)
                rows.append(prev.row_of[seq.request.request_id])
            offset += len(seq.new_token_ids)
        if not positions:
            return None
        device = self.runner.device
        token_ids = prev.device_ids.index_select(0, to_device(rows, torch.int64, device))
        return TokenFeed(to_device(positions, torch.int64, device), token_ids)

    def _complete(self, launched: _Launched) -> list[StreamChunk]:
        """Wait for a launched step's ids and turn them into chunks (placeholders filled, finishes applied)."""
        if launched.copied is not None:
            launched.copied.synchronize()
        self.timeline.mark("wait")
        chunks = []
        if launched.sampled:
            token_ids = launched.host_ids.tolist()
            logprobs = launched.host_logprobs.tolist() if launched.host_logprobs is not None else None
            for i, (req, index) in enumerate(launched.sampled):
                tracked = self.tracked.get(req.request_id)
                if tracked is None or tracked.request is not req:
                    continue  # aborted, or finished by the step before (this was its dropped extra token)
                req.output_ids[index] = token_ids[i]
                chunk = self._on_token(tracked, index, token_ids[i], logprobs[i] if logprobs is not None else None)
                if chunk is not None:
                    chunks.append(chunk)
                self.counters["generation_tokens_total"] += 1
        chunks += [self._on_embedding(req, vector) for req, vector in launched.pooled if self._live(req)]
        self.timeline.mark("output")
        return chunks

    def _live(self, req: Request) -> bool:
        tracked = self.tracked.get(req.request_id)
        return tracked is not None and tracked.request is req

    def _on_embedding(self, req: Request, vector: torch.Tensor) -> StreamChunk:
        """An embedding request's vector has reached the host: it finishes (its slots go back to the free list)."""
        self.router.finish(req, "stop", num_output=0)
        del self.tracked[req.request_id]
        self.counters["requests_finished"] += 1
        return StreamChunk(
            req.request_id, [], "stop", num_prompt_tokens=len(req.prompt_ids), time=time.monotonic(),
            embedding=vector.numpy(),
        )  # fmt: skip

    def _seq_input(self, seq) -> SeqInput:
        req = seq.request
        in_prompt = seq.prefix_len < len(req.prompt_ids)  # a prompt chunk: it may hold image tokens
        return SeqInput(
            seq.row,
            seq.prefix_len,
            list(seq.new_token_ids),
            list(seq.new_slots),
            len(req.prompt_ids),
            req.image_embeds if in_prompt else None,
            list(seq.cached_slots) if seq.cached_slots else None,
            self._image_rows_before(req, seq.prefix_len) if in_prompt else 0,
            req.pooling.mode if req.pooling is not None else None,
        )

    def _image_rows_before(self, req: Request, position: int) -> int:
        if req.image_embeds is None or position == 0:
            return 0
        token = self.runner.image_token_index
        return sum(1 for t in req.prompt_ids[:position] if t == token)

    def _sampling_input(self, req: Request) -> SamplingInput:
        tracked = self.tracked[req.request_id]
        return SamplingInput(
            req.params, req.prompt_ids, req.output_ids, self.eos_ids, tracked.generator, tracked.penalty_counts
        )

    def _on_token(self, tracked: _Tracked, index: int, token: int, logprob: float | None) -> StreamChunk | None:
        """Output id `index` of a request is `token` (already in its output_ids): stop checks, finish, chunk."""
        req = tracked.request
        params = req.params
        reason = self._finish_reason(req, index + 1, token)
        trim = 0
        if tracked.stop_checker is not None:
            released = tracked.stop_checker.push(token)
            new_ids = released.token_ids
            if released.matched:
                reason, trim = "stop", released.text_trim
            elif reason is not None:
                rest = tracked.stop_checker.flush()
                new_ids = new_ids + rest.token_ids
                if rest.matched:
                    reason, trim = "stop", rest.text_trim
        else:
            new_ids = [token]
        if reason is not None:
            self.router.finish(req, reason, num_output=index + 1)  # drops an id sampled past the finish
            del self.tracked[req.request_id]
            self.counters["requests_finished"] += 1
        elif not new_ids:
            return None
        logprobs = None
        if params.logprobs and logprob is not None:
            tracked.pending_logprobs.append(logprob)
            logprobs = tracked.pending_logprobs[: len(new_ids)]
            del tracked.pending_logprobs[: len(new_ids)]
        return StreamChunk(
            req.request_id,
            new_ids,
            reason,
            text_trim=trim,
            logprobs=logprobs,
            num_prompt_tokens=len(req.prompt_ids),
            time=time.monotonic(),
        )

    def _finish_reason(self, req: Request, num_out: int, token: int) -> str | None:
        """Why a request ends with its num_out-th output id, `token` (None: it goes on)."""
        params = req.params
        if num_out >= params.min_tokens:
            if token in params.stop_token_ids:
                return "stop"
            if not params.ignore_eos and token in self.eos_ids:
                return "stop"
        if num_out >= params.max_tokens or len(req.prompt_ids) + num_out >= self.runner.max_model_len:
            return "length"
        return None

    def _chunk_error(self, request_id: str, message: str) -> StreamChunk:
        return StreamChunk(request_id, [], "error", error=message, time=time.monotonic())

    def stats(self) -> dict:
        return {**self.router.stats(), **self.counters, **self.startup, **self.runner.late_compiles.stats(),
                **self.timeline.summary()}  # fmt: skip
