from __future__ import annotations

import math

import pytest
import torch

from llm_core.sampling import Sampler, SamplingInput, make_generator
from llm_core.sampling_params import SamplingParams

VOCAB = 50


def make_input(params: SamplingParams, prompt=(1, 2, 3), output=(), eos=(0,)) -> SamplingInput:
    return SamplingInput(
        params=params,
        prompt_ids=list(prompt),
        output_ids=list(output),
        eos_ids=tuple(eos),
        generator=make_generator(params.seed, "cpu"),
    )


def random_logits(batch: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def history_logits(history: list[int]) -> torch.Tensor:
    # A fixed "model": logits are a deterministic function of the tokens so far.
    seed = hash(tuple(history)) % (2**31)
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 2


def test_greedy_is_argmax():
    logits = random_logits(4)
    inputs = [make_input(SamplingParams(temperature=0.0)) for _ in range(4)]
    result = Sampler()(logits, inputs)
    assert result.token_ids == logits.argmax(-1).tolist()
    assert result.logprobs is None


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0])
def test_top_k_one_is_greedy(temperature):
    logits = random_logits(6, seed=1)
    inputs = [make_input(SamplingParams(temperature=temperature, top_k=1, seed=i)) for i in range(6)]
    assert Sampler()(logits, inputs).token_ids == logits.argmax(-1).tolist()


def test_does_not_modify_logits():
    logits = random_logits(2)
    before = logits.clone()
    params = SamplingParams(repetition_penalty=1.5, presence_penalty=1.0, min_tokens=2, top_p=0.5, seed=3)
    Sampler()(logits, [make_input(params), make_input(SamplingParams(temperature=0.0, min_tokens=1))])
    assert torch.equal(logits, before)


def run_requests(requests: list[tuple[SamplingParams, tuple[int, ...]]], steps: int = 12) -> list[list[int]]:
    # Decode `steps` tokens for every (params, prompt) in one batch.
    sampler = Sampler(seed=123)
    inputs = [make_input(params, prompt=prompt) for params, prompt in requests]
    for _ in range(steps):
        logits = torch.stack([history_logits(inp.prompt_ids + inp.output_ids) for inp in inputs])
        for inp, token in zip(inputs, sampler(logits, inputs).token_ids, strict=True):
            inp.output_ids.append(token)
    return [inp.output_ids for inp in inputs]


def test_seed_reproducible_across_batch_compositions():
    seeded = (SamplingParams(temperature=1.0, top_p=0.9, seed=42), (7, 7))
    alone = run_requests([seeded])[0]
    others = [
        (SamplingParams(temperature=0.0), (1,)),
        (SamplingParams(temperature=0.7, top_k=5), (2, 3)),
        (SamplingParams(temperature=1.3, seed=7, min_p=0.05), (4,)),
        (SamplingParams(repetition_penalty=1.3, presence_penalty=0.5), (5, 6)),
    ]
    assert run_requests([seeded, *others])[0] == alone
    assert run_requests([others[2], others[0], seeded])[2] == alone
    assert run_requests([others[1], seeded, others[3], seeded])[1::2] == [alone, alone]


def test_seed_reproducible_in_any_row():
    seeded = SamplingParams(temperature=1.0, seed=5)
    logits = random_logits(1, seed=9)
    first = [Sampler()(logits, [make_input(seeded)]).token_ids[0] for _ in range(3)]
    batch = torch.cat([random_logits(3, seed=10), logits])
    inputs = [make_input(SamplingParams(temperature=1.0)) for _ in range(3)] + [make_input(seeded)]
    assert Sampler()(batch, inputs).token_ids[3] == first[0] == first[1] == first[2]


def test_different_seeds_differ():
    sequences = {tuple(run_requests([(SamplingParams(temperature=1.0, seed=s), (7,))])[0]) for s in range(4)}
    assert len(sequences) == 4


def draw_many(logits_row: torch.Tensor, params: SamplingParams, num_draws: int = 2000) -> torch.Tensor:
    # Sample `num_draws` tokens from one row with a fixed shared seed.
    logits = logits_row.expand(num_draws, -1).contiguous()
    inputs = [make_input(params) for _ in range(num_draws)]
    return torch.tensor(Sampler(seed=0)(logits, inputs).token_ids)


def reference_probs(logits_row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    # Straightforward per-token reference of temperature -> top_k -> top_p -> min_p.
    probs = (logits_row / params.temperature).softmax(-1)
    order = probs.argsort(descending=True).tolist()
    keep = set(order[: params.top_k] if params.top_k else order)
    total = sum(probs[t].item() for t in keep)
    mass = 0.0
    top_p_keep = set()
    for t in order:
        if t not in keep:
            continue
        if mass >= params.top_p and params.top_p < 1.0:
            break
        top_p_keep.add(t)
        mass += probs[t].item() / total
    max_prob = max(probs[t].item() for t in top_p_keep)
    kept = [t for t in top_p_keep if probs[t].item() >= params.min_p * max_prob]
    out = torch.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_k=5),
        SamplingParams(temperature=1.0, top_p=0.6),
        SamplingParams(temperature=2.0, min_p=0.2),
        SamplingParams(temperature=0.8, top_k=10, top_p=0.8, min_p=0.05),
        SamplingParams(temperature=1.0),
    ],
)
def test_filters_never_choose_masked_tokens(params):
    logits_row = random_logits(1, seed=3)[0]
    expected = reference_probs(logits_row, params)
    counts = torch.bincount(draw_many(logits_row, params), minlength=VOCAB).float()
    assert (counts[expected == 0] == 0).all()
    freq = counts / counts.sum()
    assert (freq - expected).abs().max() < 0.05  # 2000 draws: a few standard errors


def test_small_temperature_is_greedy():
    logits = random_logits(8, seed=4)
    inputs = [make_input(SamplingParams(temperature=1e-4, seed=i)) for i in range(8)]
    assert Sampler()(logits, inputs).token_ids == logits.argmax(-1).tolist()


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = random_logits(2, seed=5)
    prompt, output = [3, 4, 5, 3], [10, 11, 4]
    expected = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([prompt + output] * 2), logits.clone())
    inputs = [make_input(SamplingParams(temperature=0.0, repetition_penalty=1.7), prompt, output)] * 2
    from llm_core.sampling.sampler import _apply_penalties

    assert torch.allclose(_apply_penalties(logits, inputs), expected)
    assert Sampler()(logits, inputs).token_ids == expected.argmax(-1).tolist()


def test_presence_frequency_penalties_match_reference():
    from llm_core.sampling.sampler import _apply_penalties

    logits = random_logits(3, seed=6)
    prompt, output = [1, 2, 2], [2, 7, 7, 7, 9]
    params = [
        SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(repetition_penalty=1.2, presence_penalty=-1.0, frequency_penalty=2.0),
        SamplingParams(),
    ]
    inputs = [make_input(p, prompt, output) for p in params]
    expected = logits.clone()
    for row, p in enumerate(params):
        for t in set(prompt + output):
            v = expected[row, t].item()
            expected[row, t] = v / p.repetition_penalty if v > 0 else v * p.repetition_penalty
        for t in set(output):  # output tokens only
            expected[row, t] -= p.frequency_penalty * output.count(t) + p.presence_penalty
    assert torch.allclose(_apply_penalties(logits, inputs), expected)


def test_kept_penalty_counts_match_counting_from_lists():
    # The scheduler keeps one PenaltyCounts per request and appends a token per step; the result
    # must equal rebuilding the counts from the token lists at every step (also with empty prompts).
    from llm_core.sampling import PenaltyCounts
    from llm_core.sampling.sampler import _apply_penalties

    params = [
        SamplingParams(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.7),
        SamplingParams(frequency_penalty=-0.5),
    ]
    prompts, outputs = [[3, 4, 4, 9], []], [[], []]
    counts = [PenaltyCounts(), PenaltyCounts()]
    generator = torch.Generator().manual_seed(0)
    for step in range(12):
        logits = random_logits(2, seed=100 + step)
        rows = list(zip(params, prompts, outputs, counts, strict=True))
        kept = [SamplingInput(p, prompt, out, (0,), counts=c) for p, prompt, out, c in rows]
        rebuilt = [SamplingInput(p, prompt, out, (0,)) for p, prompt, out, _ in rows]
        assert torch.equal(_apply_penalties(logits, kept), _apply_penalties(logits, rebuilt)), step
        for out in outputs:  # one new token per step, now and then two (update folds in whatever is new)
            out += torch.randint(1, VOCAB, (1 + (step % 5 == 4),), generator=generator).tolist()
    last = SamplingInput(params[0], prompts[0], outputs[0], (0,), counts=counts[0])
    _apply_penalties(random_logits(2, seed=99)[:1], [last])
    assert counts[0].num_counted == len(outputs[0]) and counts[0].output_counts.sum().item() == len(outputs[0])


def test_min_tokens_blocks_eos_and_stop_ids():
    logits = torch.zeros(3, VOCAB)
    logits[:, 0] = 100.0  # eos
    logits[:, 5] = 90.0  # a stop token id
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(5,), ignore_eos=True)
    inputs = [make_input(params, output=out) for out in ([], [8], [8, 9])]
    tokens = Sampler()(logits, inputs).token_ids
    assert tokens[0] not in (0, 5) and tokens[1] not in (0, 5) and tokens[2] == 0


def test_logprobs_are_raw_log_softmax():
    logits = random_logits(3, seed=8)
    inputs = [
        make_input(SamplingParams(temperature=0.0, logprobs=True, repetition_penalty=2.0)),
        make_input(SamplingParams(temperature=0.7, top_k=3, logprobs=True, seed=1)),
        make_input(SamplingParams(temperature=0.0)),
    ]
    result = Sampler()(logits, inputs)
    raw = torch.log_softmax(logits, -1)
    for row in range(2):
        assert math.isclose(result.logprobs[row], raw[row, result.token_ids[row]].item(), rel_tol=1e-6)
    assert result.logprobs[2] == 0.0
