"""llm_core: a serving engine with a token-granular KV cache and a future-aware router."""

from llm_core.config import EngineConfig
from llm_core.sampling_params import SamplingParams

__all__ = ["EngineConfig", "SamplingParams"]
