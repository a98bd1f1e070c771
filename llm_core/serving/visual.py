"""Visual step: vision tower + projector behind the md5-keyed embedding cache."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from llm_core.models import load_model_config
from llm_core.serving.metrics import CounterTracker, MetricsSink, publish_cache
from llm_core.serving.settings import ServingSettings
from llm_core.serving.visual_cache import EmbeddingCache, VisualRequest, embed_batch


class VisualService:
    def __init__(self, settings: ServingSettings, sink: MetricsSink) -> None:
        cfg = load_model_config(settings.model_dir)
        self.hidden_size = cfg.hidden_size
        self.encoder = None
        if cfg.vision is not None:
            import torch

            from llm_core.models import VisionEncoder

            dtype = getattr(torch, settings.engine.torch_dtype_name)
            self.encoder = VisionEncoder.from_pretrained(settings.model_dir, settings.engine.device, dtype)
        self.cache = EmbeddingCache(settings.visual_cache_size)
        self.sink = sink
        self.counters = CounterTracker(sink)

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        if self.encoder is None:
            raise ValueError("this model does not take images")
        return self.encoder.encode(torch.from_numpy(pixels)).float().cpu().numpy()

    def run(self, batch: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
        """Inputs of each request (pixel_values [1, N, 3, H, W], image_md5 [1, N]) ->
        image_embeds [1, N * tokens_per_image, hidden] per request."""
        requests = []
        for inputs in batch:
            pixels = np.asarray(inputs["pixel_values"], np.float32)
            pixels = pixels.reshape(pixels.shape[-4:]) if pixels.ndim == 5 else pixels
            md5s = [m.decode() if isinstance(m, bytes) else str(m) for m in inputs["image_md5"].reshape(-1)]
            requests.append(VisualRequest(pixels, md5s))
        if not any(r.md5s for r in requests):  # text only (the common case): no cache lookup, no metric update
            return [np.zeros((1, 0, self.hidden_size), np.float32) for _ in requests]
        embeds = embed_batch(requests, self.cache, self._encode, self.hidden_size)
        publish_cache(self.sink, self.counters, self.cache.hits, self.cache.misses, len(self.cache))
        return [e[None] for e in embeds]
