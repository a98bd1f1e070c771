"""LLaVA through the engine: image embeddings from VisionEncoder, greedy equal to transformers."""

from __future__ import annotations

import pytest
import torch

from llm_core import Engine, EngineConfig, SamplingParams
from llm_core.models import VisionEncoder, preprocess_images
from llm_core.testing.engine_checks import random_image, run_staggered, trim_after_eos


@pytest.mark.parametrize("max_prefill_tokens", [8192, 10], ids=["budget_8192", "budget_10"])
def test_llava_greedy_matches_transformers(tiny_llava, max_prefill_tokens):
    # With a 10-token prefill budget every image prompt (2-3 images of 16+ tokens each) runs in chunks
    # of at most 10 tokens, most of them starting and ending inside an image's tokens.
    from transformers import LlavaForConditionalGeneration

    model_dir = str(tiny_llava)
    hf = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    vision = VisionEncoder.from_pretrained(model_dir, torch.device("cpu"), torch.float32)
    config = EngineConfig(model_dir=model_dir, dtype="float32", max_prefill_tokens=max_prefill_tokens)
    with Engine(config) as engine:
        cfg = engine.model_config
        img = cfg.image_token_index
        n = cfg.num_image_tokens
        cases = []  # (prompt ids, pixel values)
        for i in range(8):
            num_images = 1 + i % 2
            images = [random_image(10 * i + k) for k in range(num_images)]
            ids = [3 + i, 40 + i]
            for k in range(num_images):
                ids += [img] * n + [50 + k + i, 60]
            ids += [70 + i] * (i % 3 + 1)
            cases.append((ids, preprocess_images(images, model_dir)))
        embeds = [vision.encode(px).reshape(-1, cfg.hidden_size) for _, px in cases]
        params = SamplingParams(max_tokens=32, temperature=0.0)
        got = run_staggered(engine, [c[0] for c in cases], params, image_embeds=embeds)
        for (ids, pixels), ours in zip(cases, got, strict=True):
            with torch.no_grad():
                out = hf.generate(
                    input_ids=torch.tensor([ids]),
                    pixel_values=pixels,
                    max_new_tokens=32,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=0,
                )
            ref = trim_after_eos(out[0, len(ids) :].tolist(), cfg.eos_token_ids)
            assert ours == ref
        assert engine.stats()["slots_used"] == 0


def test_llava_prefix_cache_shares_only_the_same_image(tiny_llava):
    # A second turn re-sends the first turn's prompt (same image), its answer and a new question: it
    # takes all of that from the prefix cache. The same turn with another image at the same place
    # shares only the text before the image. Greedy tokens equal transformers' in every case.
    from transformers import LlavaForConditionalGeneration

    model_dir = str(tiny_llava)
    hf = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    vision = VisionEncoder.from_pretrained(model_dir, torch.device("cpu"), torch.float32)
    with Engine(EngineConfig(model_dir=model_dir, dtype="float32")) as engine:
        cfg = engine.model_config
        pixels = {name: preprocess_images([random_image(seed)], model_dir) for name, seed in (("a", 1), ("b", 2))}
        embeds = {name: vision.encode(px).reshape(-1, cfg.hidden_size) for name, px in pixels.items()}
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)

        def generate(ids, image):
            before = engine.stats().get("prefix_cache_hit_tokens_total", 0)
            out = engine.generate([ids], params, [embeds[image]])[0].token_ids
            with torch.no_grad():
                ref = hf.generate(
                    input_ids=torch.tensor([ids]), pixel_values=pixels[image], max_new_tokens=8, do_sample=False,
                    num_beams=1, pad_token_id=0, min_new_tokens=8,
                )[0, len(ids) :].tolist()  # fmt: skip
            assert out == ref, (image, ids)
            return out, engine.stats()["prefix_cache_hit_tokens_total"] - before

        turn1 = [3, 40] + [cfg.image_token_index] * cfg.num_image_tokens + [50, 60]
        answer, hits = generate(turn1, "a")
        assert hits == 0
        turn2 = turn1 + answer + [70, 71]
        _, hits = generate(turn2, "a")
        assert hits == len(turn1) + len(answer) - 1  # all but the answer's last token (never stored)
        _, hits = generate(turn2, "b")
        assert hits == 2  # [3, 40], then the image differs
