"""Chat messages -> one prompt string (the model's chat template) + the images it refers to.

Image parts (`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`) become
the `<image>` tag where they stand in the message, and their data URIs go to the ensemble's
`image` input in the same order (the preprocess step decodes them). Only data URIs: the server
fetches nothing from the network. Message content is handed to the template as one string
(every chat template accepts that), parts joined by newlines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_core.serving.openai.errors import OpenAIError, bad_request
from llm_core.serving.openai.protocol import ChatMessage
from llm_core.serving.prompt import IMAGE_TAG


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    text: str
    images: tuple[str, ...]  # data URIs, one per <image> tag in `text`


def load_chat_template(value: str | None) -> str | None:
    """`--chat-template`: a file path or the template text itself."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path.read_text() if len(value) < 4096 and path.is_file() else value


class ChatRenderer:
    def __init__(self, tokenizer: Any, model_dir: str, accepts_images: bool, template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.accepts_images = accepts_images
        self.template = template or getattr(tokenizer, "chat_template", None)
        bos = getattr(tokenizer, "bos_token", None)
        adds_bos = bos is not None and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id]
        # The ensemble tokenizes with special tokens, so a BOS written by the template would double.
        self.strip_prefix = bos if adds_bos else None

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool = True, **kwargs: Any) -> ChatPrompt:
        if not self.template:
            raise bad_request(
                f"the model at {self.model_dir} has no chat template (no 'chat_template' in its "
                "tokenizer_config.json): start the OpenAI server with --chat-template FILE, or use /v1/completions",
                "messages",
            )
        images: list[str] = []
        plain = [self._plain_message(i, m, images) for i, m in enumerate(messages)]
        try:
            text = self.tokenizer.apply_chat_template(
                plain,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                chat_template=self.template,
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - jinja's TemplateError and raise_exception() of templates
            raise bad_request(f"chat template failed on these messages: {exc}", "messages") from None
        if self.strip_prefix and text.startswith(self.strip_prefix):
            text = text[len(self.strip_prefix) :]
        return ChatPrompt(text, tuple(images))

    def _plain_message(self, index: int, message: ChatMessage, images: list[str]) -> dict[str, Any]:
        content = message.content
        if isinstance(content, list):
            content = "\n".join(
                self._part_text(f"messages[{index}].content[{j}]", p, images) for j, p in enumerate(content)
            )
        plain: dict[str, Any] = {"role": message.role, "content": content or ""}
        if message.name:
            plain["name"] = message.name
        return plain

    def _part_text(self, field: str, part: Any, images: list[str]) -> str:
        if part.type == "text":
            return part.text or ""
        if not self.accepts_images:
            raise OpenAIError(400, f"{field}: this model does not take images", field)
        url = part.image_url.url if part.image_url else ""
        if not url.startswith("data:"):
            raise bad_request(f"{field}.image_url.url: only data: URIs are supported (base64-encoded images)", field)
        images.append(url)
        return IMAGE_TAG
