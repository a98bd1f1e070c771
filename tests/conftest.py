"""Shared fixtures: tiny HF model directories, built once per test session and cached by arguments."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is defined, i.e. at the first import of any kernel
# module, which may happen while collecting tests outside tests/kernels: set it before anything.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from llm_core.testing.tiny_model import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """`(arch, tokenizer="bpe", **overrides) -> Path` of a tiny model directory (see make_tiny_model).
    Same arguments return the same directory; callers must not modify it."""
    built: dict[str, Path] = {}

    def build(arch: str, tokenizer: str = "bpe", **overrides) -> Path:
        key = json.dumps([arch, tokenizer, overrides], sort_keys=True)
        if key not in built:
            out = tmp_path_factory.mktemp(f"tiny-{arch}-{tokenizer}")
            built[key] = make_tiny_model(out, arch, tokenizer, **overrides)
        return built[key]

    return build


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")


@pytest.fixture(scope="session")
def tiny_llama_sp(tiny_model_factory) -> Path:
    return tiny_model_factory("llama", "sp")


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_model_factory) -> Path:
    return tiny_model_factory("qwen2")


@pytest.fixture(scope="session")
def tiny_llava(tiny_model_factory) -> Path:
    return tiny_model_factory("llava")
