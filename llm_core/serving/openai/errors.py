"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

Errors that come back from Triton are classified by their text (Triton's streaming gRPC answer
has no status code): our input validation names the field first (`in ensemble 'ensemble',
max_tokens: must be >= 1`, llm_core.serving.request.InputError) -> 400 with that field as `param`;
an engine that is restarting or failed -> 503; anything else -> 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 501: "invalid_request_error"}
_UNAVAILABLE = (
    "engine failure",
    "restarting",
    "not healthy",
    "unavailable",
    "connect failed",
    "not ready",
    "not enabled",
)
_FIELD_ERROR = re.compile(r"^(?:in ensemble '[^']*', )?(?P<field>[A-Za-z_<][\w.\[\]<>]*): (?P<problem>.+)$", re.S)


@dataclass
class OpenAIError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    @property
    def type(self) -> str:
        if self.status == 503:
            return "service_unavailable_error"
        return _TYPES.get(self.status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param)


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param, "unsupported_parameter")


def from_triton(message: str) -> OpenAIError:
    """Classify an error message of a Triton response (see the module docstring)."""
    lowered = message.lower()
    if any(marker in lowered for marker in _UNAVAILABLE):
        return OpenAIError(503, message)
    match = _FIELD_ERROR.match(message.strip())
    if match and "ensemble" in message:
        return OpenAIError(400, match.group("field") + ": " + match.group("problem"), match.group("field"))
    return OpenAIError(500, message)
