"""Kernel tests: real shapes on a CUDA device, small shapes under the Triton interpreter on CPU.

TRITON_INTERPRET must be set before triton is first imported (triton.jit reads it when a
kernel is defined), so it is set here, at collection, when no CUDA device is present.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
