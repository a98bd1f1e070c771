"""Preprocess: validate an ensemble request and turn it into the llm step's inputs.

All input validation happens here, so a bad request fails before it costs the vision tower or
the engine anything (the engine still re-checks what it must).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llm_core.models import load_model_config
from llm_core.serving.images import decode_images
from llm_core.serving.prompt import PromptEncoder, PromptLimits
from llm_core.serving.request import InputError, parse_generate_request

# A token is rarely longer than this many UTF-8 bytes: a longer prompt cannot fit the context,
# so it is refused before tokenizing (an 8 MB prompt took 12 s to tokenize, holding this step).
MAX_BYTES_PER_TOKEN = 32
NO_IMAGE_EMBEDS = np.zeros((1, 0, 0), np.float32)  # a text request's image_embeds (the llm step reads None)


class Preprocessor:
    def __init__(
        self, model_dir: str | Path, tokenizer: Any, default_max_tokens: int = 16, max_model_len: int | None = None
    ) -> None:
        self.model_dir = Path(model_dir)
        cfg = load_model_config(model_dir)
        self.model_config = cfg
        self.default_max_tokens = default_max_tokens
        limits = PromptLimits(
            max_model_len or cfg.max_position_embeddings, cfg.image_token_index, cfg.num_image_tokens or 0
        )
        self.encoder = PromptEncoder(tokenizer, limits)
        self.max_prompt_bytes = limits.max_model_len * MAX_BYTES_PER_TOKEN
        size = cfg.vision.image_size if cfg.vision is not None else 1
        self.pixel_shape = (3, size, size)  # of the empty pixel tensor of a text-only request

    def _pixels(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, *self.pixel_shape), np.float32)
        from llm_core.models import preprocess_images

        return preprocess_images([d.image for d in images], self.model_dir).numpy().astype(np.float32)

    def _check_size(self, text_input: np.ndarray | None) -> None:
        if text_input is None:
            return
        size = sum(len(v) if isinstance(v, (bytes, str)) else 0 for v in np.asarray(text_input).reshape(-1))
        if size > self.max_prompt_bytes:
            raise InputError(
                "text_input",
                f"prompt is {size} bytes; the model's context ({self.encoder.limits.max_model_len} tokens) "
                f"holds at most about {self.max_prompt_bytes} bytes",
            )

    def run(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """-> the step's outputs (with the batch dim). Raises InputError naming the bad field."""
        self._check_size(inputs.get("text_input"))
        req = parse_generate_request(inputs, parameters, self.default_max_tokens)
        ids = self.encoder.encode(req.prompt, len(req.images))
        self.encoder.check_context(len(ids), req.params.max_tokens)
        images = decode_images(req.images)
        pixels = self._pixels(images)
        return {
            "input_ids": np.array([ids], np.int32),
            "pixel_values": pixels[None],  # [1, num_images, 3, H, W]
            "image_md5": np.array([[d.md5.encode() for d in images]], np.object_).reshape(1, len(images)),
            "sampling_parameters": np.array([[req.params.to_json().encode()]], np.object_),
            "stream": np.array([[req.stream]], np.bool_),
            "postprocess_options": np.array([[req.options.to_json().encode()]], np.object_),
        }


def with_image_embeds(
    outputs: Mapping[str, np.ndarray], encode_images: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    """`Preprocessor.run`'s outputs as the llm step takes them: pixel_values and image_md5 replaced by
    image_embeds [1, tokens, hidden], which `encode_images(pixel_values, image_md5)` (the visual model) gives for
    a request with images. A text request skips it: the visual model is not an ensemble step, so the text
    requests (most of them) make one Python stub hop less before their first token."""
    out = dict(outputs)
    pixels, md5s = out.pop("pixel_values"), out.pop("image_md5")
    out["image_embeds"] = encode_images(pixels, md5s) if md5s.size else NO_IMAGE_EMBEDS
    return out
