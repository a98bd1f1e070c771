"""Settings of the Triton models: config.pbtxt `parameters`, overridden by LLM_* environment variables.

| parameter key        | environment            | meaning                                         |
|----------------------|------------------------|-------------------------------------------------|
| model_dir            | LLM_MODEL_DIR          | HF directory (default: the built-in tiny LLaVA) |
| device               | LLM_DEVICE             | cpu / cuda                                      |
| tp                   | LLM_TP                 | tensor-parallel ranks                           |
| dtype                | LLM_DTYPE              | float32 / float16 / bfloat16 / auto             |
| max_total_tokens     | LLM_MAX_TOTAL_TOKENS   | KV pool size in tokens                          |
| max_model_len        | LLM_MAX_MODEL_LEN      | context limit (default: the model's)            |
| max_running_requests | LLM_MAX_RUNNING        | running batch limit                             |
| max_prefill_tokens   | LLM_MAX_PREFILL_TOKENS | tokens per prefill step (longer prompts: chunks)|
| mem_fraction         | LLM_MEM_FRACTION       | device memory share (CUDA)                      |
| default_max_tokens   | LLM_DEFAULT_MAX_TOKENS | max_tokens when a request gives none            |
| visual_cache_size    | LLM_VISUAL_CACHE_SIZE  | image embeddings kept (LRU entries)             |
| prefix_cache         | LLM_PREFIX_CACHE       | 1/0: reuse KV of earlier requests' prefixes     |
| cuda_graph           | LLM_CUDA_GRAPH         | 1/0: decode steps from CUDA graphs (CUDA)       |
| symm_mem_all_reduce  | LLM_SYMM_MEM_ALL_REDUCE| 1/0: small all-reduces over symmetric memory    |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llm_core.config import EngineConfig
from llm_core.serving.model_dir import resolve_model_dir

_ENV = {
    "model_dir": "LLM_MODEL_DIR",
    "device": "LLM_DEVICE",
    "tp": "LLM_TP",
    "dtype": "LLM_DTYPE",
    "max_total_tokens": "LLM_MAX_TOTAL_TOKENS",
    "max_model_len": "LLM_MAX_MODEL_LEN",
    "max_running_requests": "LLM_MAX_RUNNING",
    "max_prefill_tokens": "LLM_MAX_PREFILL_TOKENS",
    "mem_fraction": "LLM_MEM_FRACTION",
    "default_max_tokens": "LLM_DEFAULT_MAX_TOKENS",
    "visual_cache_size": "LLM_VISUAL_CACHE_SIZE",
    "prefix_cache": "LLM_PREFIX_CACHE",
    "cuda_graph": "LLM_CUDA_GRAPH",
    "symm_mem_all_reduce": "LLM_SYMM_MEM_ALL_REDUCE",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class ServingSettings:
    model_dir: Path
    device: str = "cpu"
    tp: int = 1
    dtype: str = "auto"
    max_total_tokens: int | None = None
    max_model_len: int | None = None
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192
    mem_fraction: float = 0.85
    default_max_tokens: int = 16
    visual_cache_size: int = 256
    prefix_cache: bool = True
    cuda_graph: bool = True
    symm_mem_all_reduce: bool = True

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model_dir=str(self.model_dir),
            device=self.device,
            tp=self.tp,
            dtype=self.dtype,
            max_total_tokens=self.max_total_tokens,
            max_model_len=self.max_model_len,
            max_running_requests=self.max_running_requests,
            max_prefill_tokens=self.max_prefill_tokens,
            mem_fraction=self.mem_fraction,
            prefix_cache=self.prefix_cache,
            cuda_graph=self.cuda_graph,
            symm_mem_all_reduce=self.symm_mem_all_reduce,
        )

    @property
    def torch_dtype_name(self) -> str:
        return self.engine_config().torch_dtype_name


def model_parameters(model_config_json: str) -> dict[str, str]:
    """config.pbtxt `parameters` (from the `model_config` JSON Triton passes to initialize)."""
    params = json.loads(model_config_json).get("parameters", {})
    return {key: value.get("string_value", "") for key, value in params.items()}


def load_settings(parameters: Mapping[str, str], env: Mapping[str, str] | None = None) -> ServingSettings:
    env = os.environ if env is None else env
    raw: dict[str, str] = {}
    for key, env_name in _ENV.items():
        value = env.get(env_name) or parameters.get(key, "")
        if value.strip() and not value.strip().startswith("${"):  # ${...}: an unfilled template
            raw[key] = value.strip()
    types = {f: t for f, t in ServingSettings.__annotations__.items()}
    kwargs: dict = {}
    for key, value in raw.items():
        if key == "model_dir":
            continue
        kind = types[key]
        if kind == "bool":
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"setting {key} ({_ENV[key]}) must be 1 or 0, got {value!r}")
            kwargs[key] = value.lower() in _TRUE
            continue
        try:
            kwargs[key] = int(value) if "int" in kind else float(value) if "float" in kind else value
        except ValueError:
            raise ValueError(f"setting {key} ({_ENV[key]}) must be a {kind}, got {value!r}") from None
    model_dir = resolve_model_dir(raw.get("model_dir"), build_default=True)
    return ServingSettings(model_dir=model_dir, **kwargs)
