"""Image inputs: each element is encoded image bytes (PNG, JPEG, ...), base64 text, or a data URI.

The md5 of the *encoded image bytes* keys the visual cache: the same file sent twice (in any of
the three forms) hits the cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from llm_core.serving.request import InputError

MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # refuse decompression bombs larger than this


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Image.Image  # fully loaded
    md5: str  # hex digest of the encoded image bytes


def _is_text(data: bytes) -> bool:
    try:
        data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return True


def _b64decode(field: str, text: bytes) -> bytes:
    compact = b"".join(text.split())
    compact = compact.replace(b"-", b"+").replace(b"_", b"/")  # accept the URL-safe alphabet
    compact += b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(field, f"invalid base64 ({exc})") from None


def _open_image(data: bytes) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            return None
        image.load()
        return image
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return None


def _has_image_header(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data))  # parses the header only
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return False
    return True


def encoded_image_bytes(field: str, element: bytes) -> bytes:
    """The encoded image bytes of one input element (raw, base64 or data URI)."""
    if element.startswith(b"data:"):
        header, sep, payload = element.partition(b",")
        if not sep or not header.endswith(b";base64"):
            raise InputError(field, "data URI must be of the form data:<mime>;base64,<data>")
        return _b64decode(field, payload)
    if not _is_text(element) or _has_image_header(element):
        return element
    return _b64decode(field, element)


def decode_image(element: bytes, index: int = 0) -> DecodedImage:
    field = f"image[{index}]"
    if not element:
        raise InputError(field, "is empty")
    data = encoded_image_bytes(field, element)
    image = _open_image(data)
    if image is None:
        raise InputError(field, "is not a decodable image (expected PNG/JPEG/... bytes, base64 or a data URI)")
    return DecodedImage(image, hashlib.md5(data).hexdigest())


def decode_images(elements: tuple[bytes, ...] | list[bytes]) -> list[DecodedImage]:
    return [decode_image(element, i) for i, element in enumerate(elements)]
