"""The engine's scheduling paths on CPU: mixed prefill + decode steps and the overlapped loop (ids fed on the
device, placeholders, finishes seen one step late), against transformers and against the plain loop."""

from __future__ import annotations

import pytest
import torch

from llm_core import Engine, EngineConfig, SamplingParams
from llm_core.testing.engine_checks import run_staggered, trim_after_eos

NEW_TOKENS = 24


def _prompts(vocab_size: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    lengths = [3, 40, 7, 25, 1, 12, 33, 5, 18, 9, 60, 2]
    return [torch.randint(3, vocab_size - 8, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture(scope="module")
def engines(tiny_model_factory):
    """Same model: the default loop (overlapped) with many mixed steps (8 prefill tokens each), and the plain
    loop with separate prefill and decode steps."""
    model_dir = str(tiny_model_factory("llama"))
    base = dict(model_dir=model_dir, dtype="float32", max_prefill_tokens=16)
    overlapped = Engine(EngineConfig(**base, mixed_prefill_tokens=8, decode_steps_per_prefill=2))
    plain = Engine(EngineConfig(**base, mixed_prefill_tokens=0, overlap_schedule=False))
    yield model_dir, overlapped, plain
    overlapped.shutdown()
    plain.shutdown()


def test_mixed_overlapped_greedy_matches_transformers(engines):
    from transformers import AutoModelForCausalLM

    model_dir, engine, _ = engines
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = _prompts(engine.model_config.vocab_size)
    got = run_staggered(engine, prompts, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0), every=2)
    eos = engine.model_config.eos_token_ids
    for prompt, ours in zip(prompts, got, strict=True):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        assert ours == trim_after_eos(ref[0, len(prompt) :].tolist(), eos)
    stats = engine.stats()
    assert stats["step_mixed_steps"] > 0 and stats["step_decode_steps"] > 0, stats
    assert stats["slots_used"] == 0


def test_late_finishes_match_the_plain_loop(engines):
    # Stop token ids, stop strings, min_tokens and seeded sampling end requests on an id the overlapped loop
    # sees one step late: it has already queued one more step for them, whose id must be dropped.
    _, overlapped, plain = engines
    prompts = _prompts(overlapped.model_config.vocab_size)
    first = plain.generate(prompts[:1], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0]
    stop_id = first.token_ids[3]
    stop_text = first.text[-3:] if first.text else None
    cases = [
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, stop_token_ids=[stop_id], ignore_eos=True),
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, min_tokens=5, stop_token_ids=[stop_id]),
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.8, top_k=20, seed=11),
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, repetition_penalty=1.3, ignore_eos=True),
    ]
    if stop_text:
        cases.append(SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, stop=[stop_text], ignore_eos=True))
    for params in cases:
        want = plain.generate(prompts, params)
        got = overlapped.generate(prompts, params)
        assert [(o.token_ids, o.finish_reason, o.text) for o in got] == [
            (o.token_ids, o.finish_reason, o.text) for o in want
        ], params
    assert overlapped.stats()["slots_used"] == 0


def test_timeline_counts_every_step(engines):
    _, engine, _ = engines
    before = engine.stats()
    engine.generate([[5, 6, 7]], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    after = engine.stats()
    kinds = ("prefill", "decode", "mixed", "drain")
    steps = sum(after.get(f"step_{k}_steps", 0) - before.get(f"step_{k}_steps", 0) for k in kinds)
    assert steps >= 6  # one prefill, five decodes, and the overlapped loop's last drain
    for phase in ("schedule", "launch", "wait", "output", "wall"):
        assert after[f"step_decode_{phase}_s"] >= before.get(f"step_decode_{phase}_s", 0.0)
    assert after["step_decode_wall_s"] > before.get("step_decode_wall_s", 0.0)
