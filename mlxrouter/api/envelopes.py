"""Error bodies in the shape of the API a client speaks. One error (`ApiError`: status, message,
OpenAI type/param/code) becomes OpenAI's `{"error": {...}}`, Anthropic's
`{"type": "error", "error": {"type", "message"}}` under `/v1/messages`, or Ollama's
`{"error": "..."}` under `/api/`. Chosen by the request's path, so routing errors, guards and
validation errors answer in the client's shape too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from ..status import ErrorBody, ErrorResponse

ANTHROPIC_PREFIX = "/v1/messages"
OLLAMA_PREFIX = "/api/"


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class AnthropicErrorBody(msgspec.Struct, kw_only=True):
    type: str
    message: str


class AnthropicError(msgspec.Struct, kw_only=True):
    """Anthropic's error envelope."""

    type: Literal["error"] = "error"
    error: AnthropicErrorBody


class OllamaError(msgspec.Struct, kw_only=True):
    """Ollama's error envelope."""

    error: str


# Anthropic names errors by status (its docs' table); overloaded covers a full pool.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def envelope(path: str, error: ApiError) -> msgspec.Struct:
    """`error` in the shape of the surface that serves `path`."""
    if path.startswith(ANTHROPIC_PREFIX):
        kind = _ANTHROPIC_TYPES.get(error.status)
        if kind is None:
            kind = "invalid_request_error" if error.status < 500 else "api_error"
        return AnthropicError(error=AnthropicErrorBody(type=kind, message=error.message))
    if path.startswith(OLLAMA_PREFIX):
        return OllamaError(error=error.message)
    body = ErrorBody(message=error.message, type=error.type, param=error.param, code=error.code)
    return ErrorResponse(error=body)


def error_bytes(path: str, error: ApiError) -> bytes:
    return msgspec.json.encode(envelope(path, error))
