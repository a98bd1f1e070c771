"""Image embeddings for a batch of visual requests, through an md5-keyed LRU cache.

`embed_batch` takes every request of one `execute` call (Triton's dynamic batcher groups them),
encodes the images missing from the cache in ONE call of the vision encoder (deduplicated by
md5, also within the batch), and returns per request the rows of all its images in order:
`[num_images * tokens_per_image, hidden]`, `[0, hidden]` for a text-only request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


class EmbeddingCache:
    """LRU of md5 -> embeddings [tokens_per_image, hidden], bounded by entry count."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, md5: str) -> bool:
        return md5 in self._items

    def get(self, md5: str) -> np.ndarray | None:
        value = self._items.get(md5)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(md5)
        return value

    def put(self, md5: str, embeds: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        self._items[md5] = embeds
        self._items.move_to_end(md5)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


@dataclass(frozen=True, slots=True)
class VisualRequest:
    pixel_values: np.ndarray  # [num_images, 3, H, W] fp32 (num_images may be 0)
    md5s: Sequence[str]  # one per image


EncodeFn = Callable[[np.ndarray], np.ndarray]  # [N, 3, H, W] -> [N, tokens_per_image, hidden]


def embed_batch(
    requests: Sequence[VisualRequest], cache: EmbeddingCache, encode: EncodeFn, hidden_size: int
) -> list[np.ndarray]:
    for req in requests:
        if len(req.md5s) != req.pixel_values.shape[0]:
            raise ValueError(f"{len(req.md5s)} md5s for {req.pixel_values.shape[0]} images")
    found: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}  # md5 -> pixels [3, H, W], first occurrence
    for req in requests:
        for md5, pixels in zip(req.md5s, req.pixel_values, strict=True):
            if md5 in found or md5 in missing:
                cache.hits += 1  # a repeat within the batch is encoded once
                continue
            cached = cache.get(md5)
            if cached is not None:
                found[md5] = cached
            else:
                missing[md5] = pixels
    if missing:
        encoded = encode(np.stack(list(missing.values())))  # [M, tokens_per_image, hidden]
        for md5, embeds in zip(missing, encoded, strict=True):
            embeds = np.ascontiguousarray(embeds, dtype=np.float32)
            cache.put(md5, embeds)
            found[md5] = embeds
    empty = np.zeros((0, hidden_size), np.float32)
    return [np.concatenate([found[m] for m in req.md5s]) if len(req.md5s) else empty for req in requests]
