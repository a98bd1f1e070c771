"""Settings of the Triton models: the engine's (`EngineConfig`, its environment variables in
`llm_core.config.ENV_VARS`) plus three of serving's own, each from config.pbtxt `parameters`
(same key as the field) overridden by its environment variable.

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
| prefix_cache         | LLM_PREFIX_CACHE       | 1/0: reuse KV of earlier requests' prefixes     |
| cuda_graph           | LLM_CUDA_GRAPH         | 1/0: decode steps from CUDA graphs (CUDA)       |
| symm_mem_all_reduce  | LLM_SYMM_MEM_ALL_REDUCE| 1/0: small all-reduces over symmetric memory    |
| (every other EngineConfig field: `llm_core/config.py` ENV_VARS, e.g. LLM_GEMV, LLM_PDL)                 |
| default_max_tokens   | LLM_DEFAULT_MAX_TOKENS | max_tokens when a request gives none            |
| visual_cache_size    | LLM_VISUAL_CACHE_SIZE  | image embeddings kept (LRU entries)             |
| stream_responses_per_s | LLM_STREAM_RESPONSES_PER_S | streams' responses per second, in all (0: no cap) |

`stream_responses_per_s` (default 1500) spaces each stream's responses by `n / rate` seconds, n the
streams producing tokens (first and last responses excepted; `LlmService._interval`): under many
streams a response carries several tokens instead of queueing in the postprocess step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llm_core.config import ENGINE_FIELD_KINDS, ENV_VARS, EngineConfig, read_settings
from llm_core.serving.model_dir import resolve_model_dir

# Serving's own settings: field -> environment variable.
_SERVING_ENV = {
    "default_max_tokens": "LLM_DEFAULT_MAX_TOKENS",
    "visual_cache_size": "LLM_VISUAL_CACHE_SIZE",
    "stream_responses_per_s": "LLM_STREAM_RESPONSES_PER_S",
}
_SERVING_KINDS = {"default_max_tokens": "int", "visual_cache_size": "int", "stream_responses_per_s": "float"}


@dataclass(frozen=True, slots=True)
class ServingSettings:
    engine: EngineConfig  # model_dir: resolved (the built-in default model when none is set)
    default_max_tokens: int = 16
    visual_cache_size: int = 256
    stream_responses_per_s: float = 1500.0

    @property
    def model_dir(self) -> Path:
        return Path(self.engine.model_dir)


def model_parameters(model_config_json: str) -> dict[str, str]:
    """config.pbtxt `parameters` (from the `model_config` JSON Triton passes to initialize)."""
    params = json.loads(model_config_json).get("parameters", {})
    return {key: value.get("string_value", "") for key, value in params.items()}


def load_settings(parameters: Mapping[str, str], env: Mapping[str, str] | None = None) -> ServingSettings:
    env = os.environ if env is None else env
    engine_env = {k: v for k, v in ENV_VARS.items() if k != "model_dir"}
    engine = read_settings(engine_env, ENGINE_FIELD_KINDS, env, parameters)
    serving = read_settings(_SERVING_ENV, _SERVING_KINDS, env, parameters)
    explicit_dir = (env.get(ENV_VARS["model_dir"]) or parameters.get("model_dir", "")).strip()
    if explicit_dir.startswith("${"):
        explicit_dir = ""
    model_dir = resolve_model_dir(explicit_dir or None, build_default=True)
    return ServingSettings(engine=EngineConfig(model_dir=str(model_dir), **engine), **serving)
