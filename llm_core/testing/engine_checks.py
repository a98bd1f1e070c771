"""Helpers shared by the engine tests and the GPU check scripts."""

from __future__ import annotations

import queue
import random

import torch


def run_staggered(engine, prompts, params, image_embeds=None, every: int = 3, seed: int = 0) -> list[list[int]]:
    """Submit prompt i once a random 0..`every` more chunks have arrived since prompt i-1, so
    arrivals land on different steps of one continuous batch. Returns each prompt's ids."""
    rng = random.Random(seed)
    q: queue.Queue = queue.Queue()
    embeds = image_embeds or [None] * len(prompts)
    ids: list[str] = []
    outputs: dict[str, list[int]] = {}
    finished = 0
    seen = 0
    next_at = 0
    while finished < len(prompts):
        while len(ids) < len(prompts) and seen >= next_at:
            i = len(ids)
            ids.append(engine.add_request(prompts[i], params, embeds[i], output_queue=q))
            outputs[ids[-1]] = []
            next_at = seen + rng.randint(0, every)
        chunk = q.get(timeout=300)
        seen += 1
        outputs[chunk.request_id] += chunk.token_ids
        if chunk.finished:
            if chunk.finish_reason not in ("stop", "length"):
                raise AssertionError(f"request ended with {chunk.finish_reason}: {chunk.error}")
            finished += 1
    return [outputs[i] for i in ids]


def trim_after_eos(ids: list[int], eos) -> list[int]:
    """transformers' generate keeps going after eos in a batch; cut where we would stop."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def random_image(seed: int, height: int = 48, width: int = 56):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())
