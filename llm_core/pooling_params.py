"""Per-request settings of an embedding request (Engine.embed), validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass

POOLING_MODES = ("last", "mean")


@dataclass(frozen=True, slots=True)
class PoolingParams:
    """How the final normed hidden states of a prompt become one vector.

    `last`: the last prompt token's state (decoder embedding models such as gte-Qwen2, e5-mistral);
    `mean`: the mean over every prompt token. `normalize`: scale the vector to unit L2 norm.
    """

    mode: str = "last"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.mode!r}")


__all__ = ["POOLING_MODES", "PoolingParams"]
