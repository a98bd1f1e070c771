"""Per-request sampling and stopping settings, validated once at construction."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_k: int = 0  # 0 = disabled
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()  # stop strings, matched on text, never part of the output
    ignore_eos: bool = False
    logprobs: bool = False  # return the logprob of each sampled token

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name} {rule}, got {getattr(self, name)!r}")

        check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", "must be an int >= 1")
        check(self.temperature >= 0.0, "temperature", "must be >= 0")
        check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "must be an int >= 0")
        check(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        check(0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]")
        check(self.repetition_penalty > 0.0, "repetition_penalty", "must be > 0")
        check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]")
        check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]")
        check(self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "seed", "must be an int >= 0")
        check(isinstance(self.min_tokens, int) and 0 <= self.min_tokens, "min_tokens", "must be an int >= 0")
        check(self.min_tokens <= self.max_tokens, "min_tokens", "must be <= max_tokens")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop", tuple(str(s) for s in self.stop))
        check(all(self.stop), "stop", "must not contain empty strings")

    def to_json(self) -> str:
        """Canonical JSON: every field under its own name (what preprocess hands the llm step)."""
        return json.dumps({f.name: getattr(self, f.name) for f in _FIELDS}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SamplingParams:
        """Inverse of to_json. Raises ValueError (or TypeError) for anything to_json does not write."""
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"expected a JSON object, got {type(values).__name__}")
        return cls(**values)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def needs_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


_FIELDS = fields(SamplingParams)  # to_json's keys, in order (a shallow dict: asdict deep-copies every field)

__all__ = ["SamplingParams"]
