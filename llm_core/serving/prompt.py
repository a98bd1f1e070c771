"""Prompt text -> token ids, with `<image>` placeholders expanded to the model's image tokens.

Each `<image>` tag becomes `num_image_tokens` copies of `image_token_index` (what the LLaVA
processor of transformers does), so the engine finds one image-token position per embedding row.
Tokenization is the model tokenizer's default (special tokens such as BOS added), the same as
`tokenizer(text)["input_ids"]` on the expanded text. A fast tokenizer is called through its `tokenizers`
backend directly, with `encode_batch_fast` (no character offsets, which nothing here uses: 0.31-0.38 against
0.55-0.83 ms for a 512-word prompt of the anchor's word tokenizer on a CPU test machine) on a batch of one.
transformers' `__call__` sends one text through the backend's thread pool, which added about a quarter to the
tokenization of a served request (calls spaced like requests, the process idle in between: 1.19 against 0.93
ms for 150 words); the preprocess stub turns the pool off (`TOKENIZERS_PARALLELISM=false`, model.py), so the
batch of one is encoded on the calling thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_core.request_checks import context_problem
from llm_core.serving.request import InputError

IMAGE_TAG = "<image>"


@dataclass(frozen=True, slots=True)
class PromptLimits:
    max_model_len: int  # prompt + max_tokens must fit
    image_token_index: int | None  # None: the model takes no images
    num_image_tokens: int = 0  # tokens per image


def fast_backend(tokenizer: Any) -> Any | None:
    """A fast tokenizer's `tokenizers.Tokenizer` when calling it directly gives `tokenizer(text)`'s ids: no
    truncation or padding set on it (transformers clears both before each call; a plain `encode` would apply
    them). None otherwise (a slow tokenizer, or one whose backend keeps such settings)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):  # tokenizers >= 0.21
        return None
    return backend if backend.truncation is None and backend.padding is None else None


class PromptEncoder:
    def __init__(self, tokenizer: Any, limits: PromptLimits) -> None:
        self.tokenizer = tokenizer
        self.backend = fast_backend(tokenizer)
        self.limits = limits

    def _tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.backend is not None:
            return self.backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def _with_image_tokens(self, text: str, num_tags: int) -> list[int]:
        image_id = self.limits.image_token_index
        ids = self._tokenize(text)
        if sum(1 for t in ids if t == image_id) != num_tags:
            # The tokenizer does not know the tag as one token: tokenize around the tags.
            pieces = text.split(IMAGE_TAG)
            ids = self._tokenize(pieces[0])
            for piece in pieces[1:]:
                ids.append(image_id)
                ids.extend(self._tokenize(piece, add_special_tokens=False) if piece else [])
        expanded: list[int] = []
        for token in ids:
            expanded.extend([token] * self.limits.num_image_tokens if token == image_id else [token])
        return expanded

    def encode(self, text: str, num_images: int) -> list[int]:
        if not text.strip():
            raise InputError("text_input", "prompt is empty")
        takes_images = self.limits.image_token_index is not None
        if num_images and not takes_images:
            raise InputError("image", "this model does not take images")
        num_tags = text.count(IMAGE_TAG) if takes_images else 0
        if num_tags != num_images:
            raise InputError(
                "image" if num_tags > num_images else "text_input",
                f"the prompt has {num_tags} {IMAGE_TAG} tag(s) but {num_images} image(s) were given; "
                f"put one {IMAGE_TAG} where each image goes",
            )
        ids = self._with_image_tokens(text, num_tags) if num_tags else self._tokenize(text)
        if not ids:
            raise InputError("text_input", "prompt is empty after tokenization")
        return ids

    def check_context(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """The engine's context rule (`context_problem`), answered under the ensemble's field names."""
        problem = context_problem(self.limits.max_model_len, num_prompt_tokens, max_tokens)
        if problem is not None:
            field, message = problem
            raise InputError(field, message) if field != "prompt" else InputError("text_input", f"prompt {message}")
