"""The rank-0 hot loop: take commands, schedule, run, sample, stop, report.

Runs inside the rank-0 worker process, so the caller's GIL (Triton's response sending) is
never held by it. One message per step goes back to the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llm_core.detokenizer import StopStringChecker
from llm_core.outputs import StreamChunk
from llm_core.sampling import PenaltyCounts, Sampler, SamplingInput
from llm_core.scheduler import Request, Router
from llm_core.scheduler.prefix_cache import image_cache_keys
from llm_core.worker.batch import SeqInput, StepInput
from llm_core.worker.model_runner import ModelRunner
from llm_core.worker.timeline import StepTimeline


@dataclass(slots=True)
class AddCommand:
    request_id: str
    prompt_ids: list[int]
    params: object  # SamplingParams
    image_embeds: object | None = None  # np.ndarray [N, hidden]


@dataclass(slots=True)
class _Tracked:
    """Per-request state the loop keeps beside the router's Request."""

    request: Request
    generator: torch.Generator | None
    stop_checker: StopStringChecker | None
    pending_logprobs: list[float] = field(default_factory=list)  # of sampled, unsent tokens
    penalty_counts: PenaltyCounts | None = None  # device token counts, for requests with penalties


class SchedulerLoop:
    def __init__(self, runner: ModelRunner, router: Router, tokenizer, send: Callable, broadcast: Callable):
        self.runner = runner
        self.router = router
        self.tokenizer = tokenizer
        self.send = send  # send(message) to the engine
        self.broadcast = broadcast  # broadcast(step) to ranks > 0 (no-op at tp=1)
        self.sampler = Sampler(seed=runner.cfg.seed)
        self.eos_ids = tuple(runner.model_config.eos_token_ids)
        self.tracked: dict[str, _Tracked] = {}
        self.counters = {"prompt_tokens_total": 0, "generation_tokens_total": 0, "requests_finished": 0}
        self.startup = {"warmup_s": round(runner.warmup_s, 3)}
        if runner.graph_runner is not None:
            self.startup["cuda_graphs"] = runner.graph_runner.num_graphs
        self.dirty = True  # stats changed since last report
        self.timeline = StepTimeline(runner.device)

    # --- commands ------------------------------------------------------------------------
    def add(self, cmd: AddCommand) -> None:
        req = Request(
            request_id=cmd.request_id,
            prompt_ids=list(cmd.prompt_ids),
            params=cmd.params,
            image_embeds=cmd.image_embeds,
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
        if req is None and tracked is None:
            return
        self.dirty = True
        self.send(("outputs", [StreamChunk(request_id, [], "abort", time=time.monotonic())], self.stats()))

    def has_work(self) -> bool:
        return bool(self.tracked)

    # --- one step ------------------------------------------------------------------------
    def step(self) -> None:
        timeline = self.timeline
        timeline.begin()
        batch = self.router.schedule()
        if batch is None:
            if self.dirty:
                self.send(("stats", self.stats()))
                self.dirty = False
            return
        step = StepInput(is_prefill=batch.is_prefill, seqs=[self._seq_input(seq) for seq in batch.seqs])
        timeline.mark("schedule")
        self.broadcast(step)
        timeline.gpu_start()
        logits = self.runner.forward(step)
        timeline.gpu_end()
        # A prefill chunk that is not its request's last samples nothing.
        rows = [i for i, seq in enumerate(batch.seqs) if seq.samples]
        sampling = [batch.seqs[i] for i in rows]
        chunks = []
        if sampling:
            if len(sampling) < len(batch.seqs):
                logits = logits[rows]
            inputs = [self._sampling_input(seq.request) for seq in sampling]
            timeline.mark("launch")
            result = self.sampler(logits, inputs)  # the ids come back to the host: waits for the GPU
            timeline.mark("wait")
            for i, seq in enumerate(sampling):
                logprob = result.logprobs[i] if result.logprobs is not None else None
                chunk = self._on_token(seq.request, result.token_ids[i], logprob)
                if chunk is not None:
                    chunks.append(chunk)
        else:
            timeline.mark("launch")
        self.counters["generation_tokens_total"] += len(sampling)
        self.dirty = False
        self.send(("outputs", chunks, self.stats()))
        timeline.mark("output")
        timeline.end(batch.kind, len(step.seqs), batch.num_tokens, busy=self.has_work())

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

    def _on_token(self, req: Request, token: int, logprob: float | None) -> StreamChunk | None:
        tracked = self.tracked[req.request_id]
        self.router.append_token(req, token)
        params = req.params
        reason = self._finish_reason(req, token)
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
            self.router.finish(req, reason)
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

    def _finish_reason(self, req: Request, token: int) -> str | None:
        params = req.params
        num_out = len(req.output_ids)
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
        return {**self.router.stats(), **self.counters, **self.startup, **self.timeline.summary()}
