"""Warm-up: its steps fit what they are given, and kernels compiled after it are counted and logged."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np

from llm_core.batch import SeqInput, StepInput
from llm_core.worker.timeline import LateCompiles
from llm_core.worker.warmup import warmup_steps

ROOT = Path(__file__).resolve().parents[2]


def test_warmup_steps_fit_pool_rows_and_context():
    steps = warmup_steps(num_slots=100, max_rows=4, max_model_len=64)
    assert steps, "some steps fit"
    for step in steps:
        assert len(step.seqs) <= 4
        assert sum(len(s.new_token_ids) for s in step.seqs) <= 100
        assert all(s.prefix_len + len(s.new_token_ids) <= 64 for s in step.seqs)
        if step.num_decode:  # a mixed step: its decode rows come first, one new token each
            assert all(len(s.new_token_ids) == 1 and s.prefix_len > 0 for s in step.seqs[: step.num_decode])
    # the long chunks need a larger pool and context
    assert max(sum(len(s.new_token_ids) for s in st.seqs) for st in warmup_steps(4096, 64, 4096)) == 2048


def test_prepare_starts_every_device_input_on_a_16_byte_boundary(tiny_llava):
    # Triton compiles a kernel again for a pointer argument that is not 16-byte aligned, so no input's
    # alignment may depend on the step's shape (token, sequence, cached-prefix and image counts, odd or even):
    # the warm-up could not cover every case (the GPU parity check once saw a late compile of the image
    # kernel for a step of two sequences).
    from llm_core.config import EngineConfig
    from llm_core.worker.model_runner import ModelRunner

    cfg = EngineConfig(model_dir=str(tiny_llava), device="cpu", dtype="float32", max_total_tokens=2048,
                       max_running_requests=4, max_model_len=1024)  # fmt: skip
    runner = ModelRunner(cfg, rank=0)
    runner.allocate_kv(2048)
    mc = runner.model_config
    n_img = mc.num_image_tokens
    ids = [1] + [mc.image_token_index] * n_img + [1]
    embeds = np.zeros((n_img, mc.hidden_size), dtype=np.float32)
    image = SeqInput(0, 0, ids, list(range(len(ids))), len(ids), embeds)

    def text(i: int, cached: int) -> SeqInput:
        """Text sequence i (row 1 + i, 1 + i new tokens) after `cached` prefix-cache entries."""
        slots = list(range(600 + 4 * i, 601 + 5 * i))
        return SeqInput(1 + i, cached, [5, 6, 7][: 1 + i], slots, cached_slots=list(range(900, 900 + cached)) or None)

    shapes = [
        StepInput(is_prefill=True, seqs=[text(i, cached if i == 0 else 0) for i in range(text_first)] + [image])
        for text_first in (0, 1, 2)  # sequences before the image one
        for cached in (0, 1, 3)  # prefix-cache entries of the first text sequence
    ]
    misaligned = []
    for step in shapes:
        batch = runner.prepare(step)
        for name in ("input_ids", "positions", "logits_indices", "image_positions", "out_slots", "req_rows",
                     "prefix_lens", "seq_lens", "query_start_loc"):  # fmt: skip
            if getattr(batch, name).data_ptr() % 16:
                misaligned.append((name, [(s.prefix_len, len(s.new_token_ids)) for s in step.seqs]))
        positions = [p for s in step.seqs for p in range(s.prefix_len, s.prefix_len + len(s.new_token_ids))]
        assert batch.positions.tolist() == positions  # the padding stays out of the slices
        assert batch.image_positions.tolist() == [len(batch.input_ids) - len(ids) + 1 + k for k in range(n_img)]
    assert not misaligned, misaligned
    runner.warm_up(force=True)  # every warm-up step runs (here through the torch ops)


def test_late_compiles_are_counted_and_logged(caplog):
    watch = LateCompiles()
    assert watch.stats() == {"kernels_compiled_after_warmup": 0, "compile_s_after_warmup": 0.0}
    with caplog.at_level(logging.WARNING):
        assert watch._before(key=("k", 1), repr="_prefill_attention_kernel[...](num_m_blocks: i32)") is False
        watch._after(key=("k", 1), repr="_prefill_attention_kernel[...](num_m_blocks: i32)")
    assert watch.stats()["kernels_compiled_after_warmup"] == 1
    assert "_prefill_attention_kernel" in caplog.text and "after warm-up" in caplog.text


def test_late_compiles_install_sets_triton_hooks():
    from triton import knobs

    saved = knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook
    try:
        watch = LateCompiles()
        watch.install()
        assert knobs.runtime.jit_cache_hook == watch._before
        assert knobs.runtime.jit_post_compile_hook == watch._after
    finally:
        knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook = saved


def test_gpu_fault_check_builds_its_requests():
    """scripts/device/gpu_fault_check.py feeds its own arguments to bench_serving.make_requests."""
    sys.path.insert(0, str(ROOT / "clients"))
    spec = importlib.util.spec_from_file_location("gpu_fault_check", ROOT / "scripts/device/gpu_fault_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from bench_serving import make_requests

    reqs = make_requests(module.parse_args(["--num-requests", "5"]), np.random.default_rng(0))
    assert len(reqs) == 5 and all(r.max_tokens >= 1 and r.prompt for r in reqs)
