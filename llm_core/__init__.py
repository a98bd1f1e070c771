"""llm_core: a serving engine with a token-granular KV cache and a future-aware router."""

from llm_core.config import EngineConfig
from llm_core.outputs import RequestOutput, StreamChunk
from llm_core.sampling_params import SamplingParams


def __getattr__(name: str):
    # Engine pulls in torch and transformers; import it lazily so light users stay light.
    if name in ("Engine", "EngineDeadError", "EngineUnavailableError"):
        from llm_core import engine

        return getattr(engine, name)
    raise AttributeError(name)


__all__ = [
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineUnavailableError",
    "RequestOutput",
    "SamplingParams",
    "StreamChunk",
]
