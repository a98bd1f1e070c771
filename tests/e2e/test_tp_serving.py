"""tp=2 through the served ensemble (CPU, gloo): text equal to tp=1 llm_core run directly, with
and without an image; killing one rank fails in-flight requests fast and the server recovers."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time

import pytest
import torch
from e2e_helpers import PROMPTS, grpc_stream
from transformers import AutoProcessor

from llm_core.config import EngineConfig
from llm_core.engine import Engine
from llm_core.models import VisionEncoder, preprocess_images
from llm_core.sampling_params import SamplingParams
from llm_core.testing.engine_checks import random_image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _rank_workers(server) -> list:
    ranks = []
    for proc in server.sample_tree():
        try:
            if any("spawn_main" in part for part in proc.cmdline()):
                ranks.append(proc)
        except Exception:  # noqa: BLE001 - processes may vanish while we look
            pass
    return ranks


def test_tp2_serving_matches_tp1_engine(tp2_server, tiny_llava):
    model_dir = str(tiny_llava)
    image = random_image(4)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    with Engine(EngineConfig(model_dir=model_dir, max_total_tokens=4096)) as engine:
        params = SamplingParams(temperature=0.0, max_tokens=16)
        for prompt in PROMPTS[:3]:
            want = engine.generate([engine.tokenizer(prompt)["input_ids"]], params)[0]
            got = grpc_stream(tp2_server.grpc_url, {"text_input": prompt, "temperature": 0.0, "max_tokens": 16})
            assert got.error is None and got.text == want.text, (prompt, got)
        processor = AutoProcessor.from_pretrained(model_dir)
        inputs = processor(text="<image> describe", images=[image], return_tensors="pt")
        encoder = VisionEncoder.from_pretrained(model_dir, torch.device("cpu"), torch.float32)
        embeds = encoder.encode(preprocess_images([image], model_dir)).reshape(-1, engine.model_config.hidden_size)
        want = engine.generate([inputs["input_ids"][0].tolist()], params, [embeds])[0]
    values = {"text_input": "<image> describe", "temperature": 0.0, "max_tokens": 16,
              "image": [base64.b64encode(buf.getvalue()).decode()]}  # fmt: skip
    got = grpc_stream(tp2_server.grpc_url, values)
    assert got.error is None and got.text == want.text, got


def test_killing_one_rank_resumes_the_stream(tp2_server):
    ranks = _rank_workers(tp2_server)
    assert len(ranks) >= 2, f"expected 2 rank processes, found {ranks}"
    victim = max(ranks, key=lambda p: p.pid)  # rank 1 starts last
    result = {}
    values = {"text_input": "a long story", "max_tokens": 300,
              "sampling_parameters": json.dumps({"ignore_eos": True, "temperature": 0})}  # fmt: skip
    want = grpc_stream(tp2_server.grpc_url, values)
    thread = threading.Thread(target=lambda: result.update(r=grpc_stream(tp2_server.grpc_url, values)))
    thread.start()
    time.sleep(0.5)
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive()
    got = result["r"]
    assert got.error is None and got.finish_reason == "length" and got.text == want.text, got
    old = {p.pid for p in ranks}
    alive_old = [p.pid for p in _rank_workers(tp2_server) if p.pid in old]
    assert not alive_old, f"old rank processes still alive: {alive_old}"
