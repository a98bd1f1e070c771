"""Sampling: one batched call per step turns [B, V] logits into the next token of each row."""

from llm_core.sampling.sampler import (
    DeviceSample,
    PenaltyCounts,
    Sampler,
    SampleResult,
    SamplingInput,
    make_generator,
)

__all__ = ["DeviceSample", "PenaltyCounts", "SampleResult", "Sampler", "SamplingInput", "make_generator"]
