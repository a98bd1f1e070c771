"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.

Errors that come back from Triton are classified by their text (Triton's streaming gRPC answer
has no status code): our input validation names the field first (`in ensemble 'ensemble',
max_tokens: must be >= 1`, llm_core.serving.request.InputError) -> 400 with that field as `param`;
an engine that is restarting or failed -> 503 that tells the client to retry (the message says so and
the response carries `Retry-After`), whichever part of the stack noticed first: our engine, or
tritonserver itself on a dead stub; a part the server was started without -> 503 without the hint;
anything else -> 500.
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
)
_DISABLED = "not enabled"  # a part this server was started without: 503, but retrying will not help
RETRY_AFTER_S = 5
_FIELD_ERROR = re.compile(r"^(?:in ensemble '[^']*', )?(?P<field>[A-Za-z_<][\w.\[\]<>]*): (?P<problem>.+)$", re.S)


@dataclass
class OpenAIError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.message}"

    @property
    def type(self) -> str:
        if self.status == 503:
            return "service_unavailable_error"
        return _TYPES.get(self.status, "server_error")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param)


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param, "unsupported_parameter")


def unavailable(message: str) -> OpenAIError:
    """503 that asks the client to come back: a hint in the message and `Retry-After`."""
    hint = "" if "retry" in message.lower() else f"; retry in {RETRY_AFTER_S} s"
    return OpenAIError(503, message + hint, retry_after_s=RETRY_AFTER_S)


def from_triton(message: str) -> OpenAIError:
    """Classify an error message of a Triton response (see the module docstring)."""
    lowered = message.lower()
    if any(marker in lowered for marker in _UNAVAILABLE):
        return unavailable(message)
    if _DISABLED in lowered:
        return OpenAIError(503, message)
    match = _FIELD_ERROR.match(message.strip())
    if match and "ensemble" in message:
        return OpenAIError(400, match.group("field") + ": " + match.group("problem"), match.group("field"))
    return OpenAIError(500, message)
