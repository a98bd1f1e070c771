"""The engine end to end on CPU: exact against transformers, batch invariant, pauses, stops."""

from __future__ import annotations

import queue
import random

import pytest
import torch

from llm_core import Engine, EngineConfig, SamplingParams
from llm_core.testing.engine_checks import run_staggered, trim_after_eos

NEW_TOKENS = 32


def _prompts(vocab_size: int, count: int, seed: int, special: set[int]) -> list[list[int]]:
    rng = random.Random(seed)
    usable = [t for t in range(vocab_size) if t not in special]
    lengths = [3, 40, 7, 25, 1, 12, 33, 5, 18, 9][:count] + [rng.randint(1, 40) for _ in range(count - 10)]
    return [[rng.choice(usable) for _ in range(n)] for n in lengths[:count]]


def _special_ids(engine: Engine) -> set[int]:
    tok = engine.tokenizer
    ids = set(tok.all_special_ids) if tok is not None else set()
    if engine.model_config.image_token_index is not None:
        ids.add(engine.model_config.image_token_index)
    return ids


def hf_greedy(hf_model, prompt: list[int], max_new: int, **extra) -> list[int]:
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([prompt]),
            max_new_tokens=max_new,
            do_sample=False,
            num_beams=1,
            pad_token_id=0,
            **extra,
        )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def text_model(request, tiny_model_factory):
    model_dir = tiny_model_factory(request.param)
    engine = Engine(EngineConfig(model_dir=str(model_dir), device="cpu", dtype="float32"))
    yield model_dir, engine
    engine.shutdown()


def test_greedy_matches_transformers_in_a_staggered_batch(text_model):
    from transformers import AutoModelForCausalLM

    model_dir, engine = text_model
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = _prompts(engine.model_config.vocab_size, 10, seed=1, special=_special_ids(engine))
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
    got = run_staggered(engine, prompts, params)
    eos = engine.model_config.eos_token_ids
    for prompt, ours in zip(prompts, got, strict=True):
        assert ours == trim_after_eos(hf_greedy(hf, prompt, NEW_TOKENS), eos)
    assert engine.stats()["slots_used"] == 0


def test_repetition_penalty_matches_transformers_in_a_staggered_batch(text_model):
    # Penalty counts are kept per request on the device across steps (sampling.PenaltyCounts); with
    # greedy decoding the tokens must equal transformers' RepetitionPenaltyLogitsProcessor run.
    from transformers import AutoModelForCausalLM

    model_dir, engine = text_model
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = _prompts(engine.model_config.vocab_size, 6, seed=4, special=_special_ids(engine))
    params = SamplingParams(max_tokens=24, temperature=0.0, repetition_penalty=1.8)
    got = run_staggered(engine, prompts, params)
    plain = run_staggered(engine, prompts, SamplingParams(max_tokens=24, temperature=0.0))
    eos = engine.model_config.eos_token_ids
    for prompt, ours in zip(prompts, got, strict=True):
        assert ours == trim_after_eos(hf_greedy(hf, prompt, 24, repetition_penalty=1.8), eos)
    assert got != plain  # the penalty changed something, so the comparison above means something
    assert engine.stats()["slots_used"] == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("decode_steps_per_prefill", 0), ("tp", 0), ("mem_fraction", 1.5), ("mixed_prefill_tokens", -1)],
)
def test_engine_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"{field} must be .*got {value}"):
        EngineConfig(model_dir="m", **{field: value})


@pytest.mark.parametrize("steps_per_prefill", [1, 3])
def test_chunked_prefill_matches_transformers(tiny_model_factory, steps_per_prefill):
    # A 7-token prefill budget: prompts of up to 40 tokens run in chunks over several prefill steps
    # (their later chunks attend to the earlier ones through the KV pool), interleaved with the
    # decode steps of the others; greedy tokens must not change.
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_factory("llama")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = EngineConfig(
        model_dir=str(model_dir), device="cpu", dtype="float32", max_prefill_tokens=7,
        decode_steps_per_prefill=steps_per_prefill,
    )  # fmt: skip
    with Engine(config) as engine:
        prompts = _prompts(engine.model_config.vocab_size, 8, seed=7, special=_special_ids(engine))
        got = run_staggered(engine, prompts, SamplingParams(max_tokens=16, temperature=0.0))
        eos = engine.model_config.eos_token_ids
        for prompt, ours in zip(prompts, got, strict=True):
            assert ours == trim_after_eos(hf_greedy(hf, prompt, 16), eos)
        assert engine.stats()["slots_used"] == 0


def test_prefix_cache_shares_a_system_prompt_and_matches_transformers(text_model):
    # The engine keeps finished requests' tokens (prefix_cache=True by default): later prompts that
    # start with the same 30 tokens prefill only their own tail, reading the shared KV through
    # req_to_slot. Greedy tokens must equal transformers' on the full prompt.
    from transformers import AutoModelForCausalLM

    model_dir, engine = text_model
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    special = _special_ids(engine)
    system = [t for p in _prompts(engine.model_config.vocab_size, 3, seed=21, special=special) for t in p][:30]
    tails = _prompts(engine.model_config.vocab_size, 6, seed=22, special=special)
    prompts = [system + tail[:8] for tail in tails]
    params = SamplingParams(max_tokens=12, temperature=0.0)
    hits_before = engine.stats()["prefix_cache_hit_tokens_total"]
    first = engine.generate(prompts[:1], params)[0].token_ids  # leaves system + tail in the cache
    rest = run_staggered(engine, prompts[1:], params)
    again = run_staggered(engine, prompts, params)  # every prompt now cached but its last token
    hits = engine.stats()["prefix_cache_hit_tokens_total"] - hits_before
    assert hits >= 30 * 5 + sum(len(p) - 1 for p in prompts)
    eos = engine.model_config.eos_token_ids
    for prompt, ours, ours_again in zip(prompts, [first, *rest], again, strict=True):
        expected = trim_after_eos(hf_greedy(hf, prompt, 12), eos)
        assert ours == expected and ours_again == expected
    stats = engine.stats()
    assert stats["slots_used"] == 0 and stats["slots_cached"] > 0


def test_batch_invariance_with_concurrent_requests(text_model):
    _, engine = text_model
    prompts = _prompts(engine.model_config.vocab_size, 36, seed=2, special=_special_ids(engine))
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    alone = [engine.generate([p], params)[0].token_ids for p in prompts[:6]]
    together = run_staggered(engine, prompts, params, every=2, seed=3)
    assert together[:6] == alone
    assert all(len(ids) == 24 for ids in together)
    assert engine.stats()["slots_used"] == 0


def test_pause_and_resume_keeps_outputs(tiny_model_factory):
    model_dir = tiny_model_factory("llama")
    prompts = [[5 + i, 17, 33 + i, 9] * (1 + i % 3) for i in range(12)]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    with Engine(EngineConfig(model_dir=str(model_dir), dtype="float32")) as roomy:
        expected = [o.token_ids for o in roomy.generate(prompts, params)]
    tight = EngineConfig(
        model_dir=str(model_dir),
        dtype="float32",
        max_total_tokens=160,
        optimistic_admission=True,
        optimistic_ratio=0.1,
    )
    with Engine(tight) as engine:
        got = [o.token_ids for o in engine.generate(prompts, params)]
        stats = engine.stats()
    assert stats["total_pauses"] > 0
    assert got == expected
    assert stats["slots_used"] == 0


def test_seeded_sampling_and_top_k_one(text_model):
    _, engine = text_model
    prompt = [11, 12, 13, 14]
    sampled = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    first = engine.generate([prompt], sampled)[0].token_ids
    others = _prompts(engine.model_config.vocab_size, 8, seed=5, special=_special_ids(engine))
    batch = engine.generate([prompt, *others], sampled)[0].token_ids
    assert first == batch
    other_seed = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=1.0, seed=99, ignore_eos=True))
    assert other_seed[0].token_ids != first
    greedy = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    top1 = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=1.3, top_k=1, seed=7, ignore_eos=True))
    assert top1[0].token_ids == greedy[0].token_ids


def test_stop_strings_cut_exactly(text_model):
    _, engine = text_model
    tok = engine.tokenizer
    prompt = tok.encode("hello world")
    free = engine.generate([prompt], SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True))[0]
    text = free.text
    assert len(text) > 6
    for start, length in ((3, 2), (len(text) // 2, 3), (1, 1)):
        stop = text[start : start + length]
        cut = text[: text.index(stop)]
        out = engine.generate([prompt], SamplingParams(max_tokens=32, temperature=0.0, stop=(stop,), ignore_eos=True))[
            0
        ]
        assert out.finish_reason == "stop"
        assert out.text == cut
        streamed = "".join(_stream_text(engine, prompt, stop))
        assert streamed == cut


def _stream_text(engine, prompt, stop):
    from llm_core.detokenizer import IncrementalDetokenizer

    detok = IncrementalDetokenizer(engine.tokenizer, prompt)
    params = SamplingParams(max_tokens=32, temperature=0.0, stop=(stop,), ignore_eos=True)
    for chunk in engine.stream(prompt, params):
        text = detok.push(chunk.token_ids)
        if chunk.finished:
            text += detok.finish()
            text = text[: len(text) - chunk.text_trim]
        yield text


def test_abort_and_errors_free_everything(text_model):
    _, engine = text_model
    q: queue.Queue = queue.Queue()
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    rid = engine.add_request([1, 2, 3], params, output_queue=q)
    first = q.get(timeout=60)
    assert first.request_id == rid
    engine.abort(rid)
    while True:
        chunk = q.get(timeout=60)
        if chunk.finished:
            break
    assert chunk.finish_reason == "abort"
    with pytest.raises(ValueError, match="prompt"):
        engine.add_request([], params)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.add_request([1, 2], SamplingParams(max_tokens=engine.max_model_len))
    out = engine.generate([[4, 5]], SamplingParams(max_tokens=3, temperature=0.0))[0]
    assert out.finish_reason in ("stop", "length")
    assert engine.stats()["slots_used"] == 0


def test_generate_validates_its_arguments(text_model):
    _, engine = text_model
    vocab = engine.model_config.vocab_size
    with pytest.raises(ValueError, match=r"stop_token_ids must be in \[0, "):
        engine.generate([[1, 2]], SamplingParams(max_tokens=2, stop_token_ids=(vocab + 5,)))
    with pytest.raises(ValueError, match="params: got 2 SamplingParams for 3 prompts"):
        engine.generate([[1], [2], [3]], [SamplingParams(), SamplingParams()])
    with pytest.raises(ValueError, match="image_embeds: got 1 entries for 2 prompts"):
        engine.generate([[1], [2]], SamplingParams(), image_embeds=[None])
    with pytest.raises(ValueError, match="prompts: expected a list of token id lists"):
        engine.generate([1, 2, 3], SamplingParams())
    with pytest.raises(ValueError, match="params: expected SamplingParams"):
        engine.generate([[1, 2]], [{"max_tokens": 2}])
    # A bad prompt in the middle fails before anything is queued.
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.generate([[1, 2], [], [3]], SamplingParams(max_tokens=2))
    assert engine.stats()["slots_used"] == 0 and not engine._inflight


def test_stop_token_ids_min_tokens_and_logprobs(text_model):
    _, engine = text_model
    prompt = [21, 22, 23]
    free = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))[0].token_ids
    stop_id = free[5]
    first = free.index(stop_id)
    out = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=(stop_id,)))[0]
    assert out.finish_reason == "stop" and out.token_ids == free[: first + 1]
    # min_tokens masks stop ids until enough tokens exist, so the stop id cannot end it early.
    late = SamplingParams(max_tokens=16, temperature=0.0, stop_token_ids=(stop_id,), min_tokens=first + 2)
    out = engine.generate([prompt], late)[0]
    assert len(out.token_ids) >= first + 2
    assert stop_id not in out.token_ids[: first + 2]
    with_lp = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=True))
    lps = with_lp[0].logprobs
    assert lps is not None and len(lps) == 8 and all(lp <= 0.0 for lp in lps)
