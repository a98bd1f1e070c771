"""Batched sampler: penalties, min_tokens, greedy, temperature, top-k, top-p, min-p, seeds.

Per row, in this order:
  1. min_tokens: while fewer than `min_tokens` tokens were generated, eos and stop token ids
     get -inf.
  2. repetition_penalty over prompt + output tokens (HF semantics: a seen token's logit l
     becomes l / p if l > 0 else l * p).
  3. presence / frequency penalties over output tokens only (OpenAI / vLLM semantics:
     l -= frequency * count + presence * (count > 0)).
  4. greedy rows (temperature == 0 or top_k == 1) take the argmax; nothing is drawn.
  5. other rows: logits / temperature, top-k, top-p (the smallest set of most likely tokens
     whose probability sums to >= top_p, never empty), min-p (drop p < min_p * max p), then
     one exponential race: token = argmax(probs / q), q ~ Exp(1) i.i.d. over the vocabulary.

Reproducibility: each seeded row draws its own `q` of shape [V] from its own generator, once
per sampled step, so its tokens depend only on its own logits and seed, not on the other rows
of the batch. Rows without a generator share the sampler's generator (one per device).

Penalty counts: a caller that passes a `PenaltyCounts` per request (the scheduler loop does) pays
O(new tokens) per step; without one they are rebuilt from the token lists.

Logprobs are those of the raw model distribution, log_softmax(logits), at the chosen token
(as in vLLM); they are computed only when some row asks for them.

`Sampler.sample` leaves its results on the logits' device and never waits for the device (small
host lists go up through pinned memory), so the rank-0 loop can queue the next step before the ids
come back; calling the sampler returns them as host lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_core.sampling_params import SamplingParams


@dataclass(slots=True)
class PenaltyCounts:
    """One request's token counts on the logits' device, kept across steps (penalties only).

    Built from the prompt once, then each step folds in only the output tokens added since the
    last step, instead of rebuilding [V] counts from the whole token lists every step.
    """

    prompt_seen: torch.Tensor | None = None  # [V] bool
    output_counts: torch.Tensor | None = None  # [V] fp32
    num_counted: int = 0  # output tokens already in output_counts

    def update(self, prompt_ids: list[int], output_ids: list[int], vocab_size: int, device: torch.device) -> None:
        if self.output_counts is None:
            self.prompt_seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if prompt_ids:
                self.prompt_seen[torch.tensor(prompt_ids, device=device)] = True
            self.output_counts = torch.zeros(vocab_size, device=device)
        new = output_ids[self.num_counted :]
        if new:
            index = torch.tensor(new, device=device)
            self.output_counts.index_add_(0, index, torch.ones(len(new), device=device))
            self.num_counted = len(output_ids)


@dataclass(slots=True)
class SamplingInput:
    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]
    eos_ids: tuple[int, ...]
    generator: torch.Generator | None = None  # seeded per request on the logits' device
    counts: PenaltyCounts | None = None  # kept by the caller across steps; None: counted from the lists


@dataclass(frozen=True, slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None  # per row; 0.0 for rows that did not ask, None if none asked


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """`Sampler.sample`'s results, still on the logits' device."""

    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None  # [B] fp32 (0.0 for rows that did not ask), None if none asked


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list on `device` without waiting for the device's queue (pinned, non-blocking copy)."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """The per-request generator for `SamplingInput.generator` (None when unseeded)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class Sampler:
    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, logits: torch.Tensor, inputs: list[SamplingInput]) -> SampleResult:
        result = self.sample(logits, inputs)
        logprobs = result.logprobs.tolist() if result.logprobs is not None else None
        return SampleResult(result.token_ids.tolist(), logprobs)

    def sample(self, logits: torch.Tensor, inputs: list[SamplingInput]) -> DeviceSample:
        # logits: [B, V] fp32, one row per input.
        assert logits.dim() == 2 and logits.shape[0] == len(inputs), (logits.shape, len(inputs))
        assert logits.dtype == torch.float32, logits.dtype
        logprobs = None
        if any(inp.params.logprobs for inp in inputs):
            logprobs = torch.log_softmax(logits, dim=-1)  # [B, V], raw model distribution
        logits = _apply_min_tokens(logits, inputs)
        logits = _apply_penalties(logits, inputs)

        token_ids = logits.argmax(dim=-1)  # [B]; kept for greedy rows
        sampled_rows = [i for i, inp in enumerate(inputs) if not inp.params.greedy]
        if sampled_rows:
            rows = to_device(sampled_rows, torch.int64, logits.device)
            probs = _filtered_probs(logits[rows], [inputs[i].params for i in sampled_rows])
            q = self._exponentials(probs.shape[1], [inputs[i].generator for i in sampled_rows], logits.device)
            token_ids[rows] = (probs / q).argmax(dim=-1)

        if logprobs is None:
            return DeviceSample(token_ids, None)
        picked = logprobs.gather(1, token_ids[:, None]).squeeze(1)
        asked = to_device([bool(inp.params.logprobs) for inp in inputs], torch.bool, logits.device)
        return DeviceSample(token_ids, torch.where(asked, picked, torch.zeros_like(picked)))

    def _exponentials(
        self, vocab_size: int, generators: list[torch.Generator | None], device: torch.device
    ) -> torch.Tensor:
        # -> [S, V]: one Exp(1) draw per token. Seeded rows draw on their own generator (one
        # [V] draw per step), the rest on the shared one.
        q = torch.empty(len(generators), vocab_size, device=device)
        shared = [i for i, g in enumerate(generators) if g is None]
        for i, g in enumerate(generators):
            if g is not None:
                q[i].exponential_(generator=g)
        if len(shared) == len(generators):
            q.exponential_(generator=self._shared_generator(device))
        elif shared:
            draws = torch.empty(len(shared), vocab_size, device=device)
            q[to_device(shared, torch.int64, device)] = draws.exponential_(generator=self._shared_generator(device))
        # Exp(1) may return exactly 0 on some backends: probs / 0 would be inf (or NaN).
        return q.clamp_(min=torch.finfo(q.dtype).tiny)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            if self._seed is None:
                generator.seed()
            else:
                generator.manual_seed(self._seed)
            self._generators[device] = generator
        return generator


def _apply_min_tokens(logits: torch.Tensor, inputs: list[SamplingInput]) -> torch.Tensor:
    rows: list[int] = []
    cols: list[int] = []
    for i, inp in enumerate(inputs):
        if len(inp.output_ids) < inp.params.min_tokens:
            banned = set(inp.eos_ids) | set(inp.params.stop_token_ids)
            rows += [i] * len(banned)
            cols += sorted(banned)
    if not rows:
        return logits
    logits = logits.clone()
    index = (to_device(rows, torch.int64, logits.device), to_device(cols, torch.int64, logits.device))
    logits[index] = float("-inf")
    return logits


def _apply_penalties(logits: torch.Tensor, inputs: list[SamplingInput]) -> torch.Tensor:
    penalized = [i for i, inp in enumerate(inputs) if inp.params.needs_penalties]
    if not penalized:
        return logits
    device = logits.device
    params = [inputs[i].params for i in penalized]
    rows = torch.tensor(penalized, device=device)
    sub = logits[rows]  # [P, V]
    output_counts, seen = _penalty_counts([inputs[i] for i in penalized], sub.shape[1], device)

    repetition = torch.tensor([p.repetition_penalty for p in params], device=device)[:, None]  # [P, 1]
    penalized_logits = torch.where(sub > 0, sub / repetition, sub * repetition)
    sub = torch.where(seen, penalized_logits, sub)

    frequency = torch.tensor([p.frequency_penalty for p in params], device=device)[:, None]
    presence = torch.tensor([p.presence_penalty for p in params], device=device)[:, None]
    sub = sub - frequency * output_counts - presence * (output_counts > 0).float()

    logits = logits.clone()
    logits[rows] = sub
    return logits


def _penalty_counts(
    inputs: list[SamplingInput], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    # -> output token counts [P, V] fp32, and seen anywhere (prompt or output) [P, V] bool.
    if all(inp.counts is not None for inp in inputs):
        for inp in inputs:
            inp.counts.update(inp.prompt_ids, inp.output_ids, vocab_size, device)
        output_counts = torch.stack([inp.counts.output_counts for inp in inputs])
        prompt_seen = torch.stack([inp.counts.prompt_seen for inp in inputs])
    else:
        output_counts = _token_counts([inp.output_ids for inp in inputs], vocab_size, device)
        prompt_seen = _token_counts([inp.prompt_ids for inp in inputs], vocab_size, device) > 0
    return output_counts, (output_counts > 0) | prompt_seen


def _token_counts(id_lists: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    # -> [len(id_lists), V] fp32: how often each token occurs in each list.
    counts = torch.zeros(len(id_lists), vocab_size, device=device)
    rows = [i for i, ids in enumerate(id_lists) for _ in ids]
    if rows:
        cols = [t for ids in id_lists for t in ids]
        index = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
        counts.index_put_(index, torch.ones(len(rows), device=device), accumulate=True)
    return counts


def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    # logits: [S, V] of rows that sample -> probs [S, V] with filtered tokens at exactly 0.
    device = logits.device
    vocab_size = logits.shape[1]
    # The floor only keeps logits / temperature finite; below it sampling is argmax anyway.
    temperature = to_device([max(p.temperature, 1e-6) for p in params], torch.float32, device)[:, None]
    logits = logits / temperature
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [S, V]
        top_k = to_device([p.top_k if p.top_k > 0 else vocab_size for p in params], torch.int64, device)
        rank = torch.arange(vocab_size, device=device)
        sorted_logits = sorted_logits.masked_fill(rank[None, :] >= top_k[:, None], float("-inf"))
        if any(p.top_p < 1.0 for p in params):
            top_p = to_device([p.top_p for p in params], torch.float32, device)[:, None]
            sorted_probs = sorted_logits.softmax(dim=-1)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # [S, V], 0 at rank 0
            drop = (mass_before >= top_p) & (top_p < 1.0)
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    if any(p.min_p > 0.0 for p in params):
        min_p = to_device([p.min_p for p in params], torch.float32, device)[:, None]
        threshold = min_p * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs
