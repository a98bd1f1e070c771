"""build_model and load_weights: safetensors (single file or sharded index) or dummy weights."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from llm_core.models.config import ModelConfig
from llm_core.models.layers import TensorParallel, default_weight_loader
from llm_core.models.llama import LlamaForCausalLM

LOAD_FORMATS = ("safetensors", "dummy")


def build_model(
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device | str,
    tp_rank: int = 0,
    tp_size: int = 1,
    tp_group: Any = None,
    fast_all_reduce: Any = None,
) -> LlamaForCausalLM:
    """The language model of this rank (for "llava" its text part), parameters uninitialised."""
    tp = TensorParallel(rank=tp_rank, size=tp_size, group=tp_group, fast_all_reduce=fast_all_reduce)
    return LlamaForCausalLM(cfg, tp, dtype, torch.device(device)).eval()


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    return files


def iter_checkpoint(model_dir: str | Path) -> Iterator[tuple[str, Any]]:
    """Yields (name, safetensors slice); a slice is read only where it is indexed."""
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_slice(name)


def load_weights(model: nn.Module, model_dir: str | Path, load_format: str = "safetensors") -> None:
    """Fill every parameter of `model` (LlamaForCausalLM or VisionEncoder), cast to its dtype.

    The model maps checkpoint names with `checkpoint_param(name) -> (param name, shard id) | None`;
    each parameter's `weight_loader` takes its own shard. Raises if a parameter stays unloaded.
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    if load_format == "dummy":
        fill_dummy_weights(model)
        return
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, source in iter_checkpoint(model_dir):
        target = model.checkpoint_param(name)
        if target is None:
            continue
        param_name, shard_id = target
        if param_name not in params:
            raise KeyError(f"checkpoint tensor {name!r} maps to unknown parameter {param_name!r}")
        param = params[param_name]
        loader = getattr(param, "weight_loader", default_weight_loader)
        if shard_id is None:
            loader(param, source)
        else:
            loader(param, source, shard_id)
        loaded.add(param_name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"parameters missing from the checkpoint in {model_dir}: {missing[:8]}")


@torch.no_grad()
def fill_dummy_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Deterministic random weights: 1-D `*.weight` (norms) = 1, everything else ~ N(0, std)."""
    generators: dict[torch.device, torch.Generator] = {}
    for name, param in model.named_parameters():
        if param.dim() == 1 and name.endswith(".weight"):
            param.fill_(1.0)
            continue
        if param.device not in generators:
            generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        param.normal_(0.0, std, generator=generators[param.device])
