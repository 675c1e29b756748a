"""Every error, ours or the framework's, becomes one error body with the right status, in the
shape of the API the client speaks (`envelopes.py`: OpenAI's `{"error": {"message", "type",
"param", "code"}}` unless the path is Anthropic's or Ollama's). No tracebacks, no paths.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from ..errors import (
    ClientDisconnectedError,
    ConfigError,
    ContextLengthExceededError,
    EngineError,
    EntryBusyError,
    InvalidRequestError,
    MlxRouterError,
    ModelLoadError,
    ModelNotFoundError,
    ModelTooLargeError,
    PoolBusyError,
    ShuttingDownError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .envelopes import ApiError, error_bytes

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[MlxRouterError], int]] = [
    (ModelNotFoundError, 404),
    (ClientDisconnectedError, 499),  # nginx's "client closed request"; nobody reads it
    (ContextLengthExceededError, 400),
    (InvalidRequestError, 400),
    (PoolBusyError, 503),
    (EntryBusyError, 409),
    (ShuttingDownError, 503),
    (ModelTooLargeError, 507),
    (UpstreamTimeoutError, 504),
    (UpstreamError, 502),
    (ModelLoadError, 500),
    (EngineError, 500),
    (ConfigError, 500),
]

_HTTP_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limited"),
}


def error_response(
    request: Request[Any, Any, Any],
    status: int,
    message: str,
    *,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    error = ApiError(status=status, message=message, type=type_, param=param, code=code)
    body = error_bytes(request.url.path, error)
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


def status_of(exc: MlxRouterError) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


def handle_domain_error(request: Request[Any, Any, Any], exc: MlxRouterError) -> Response[bytes]:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, PoolBusyError) else None
    if isinstance(exc, ShuttingDownError):
        headers = {"Retry-After": "5", "Connection": "close"}
    return error_response(
        request,
        status_of(exc),
        exc.message,
        type_=exc.type,
        param=exc.param,
        code=exc.code,
        headers=headers,
    )


# msgspec says e.g. "Expected `float` <= 2.0 - at `$.temperature`"
_AT = re.compile(r" - at `\$\.?([^`]*)`")


def handle_validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[bytes]:
    message, param = "The request body is not valid", None
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if isinstance(item, dict) and item.get("message"):
            message, param = _describe_invalid(str(item["message"]), str(item.get("key") or ""))
            break
    else:
        detail = str(exc.detail or "")
        if "JSON" in detail or "decode" in detail.lower():
            message = "The request body is not valid JSON"
    return error_response(
        request, 400, message, type_="invalid_request_error", param=param, code="invalid_value"
    )


_MISSING = re.compile(r"missing required field `([^`]+)`")


def _describe_invalid(text: str, key: str) -> tuple[str, str | None]:
    """msgspec's message and Litestar's key -> (message, OpenAI `param`)."""
    where = ""
    match = _AT.search(text)
    if match:
        where = match.group(1)
        text = text[: match.start()]
    if not where and key not in ("", "data"):
        where = key
    missing = _MISSING.search(text)
    if missing:  # the field that is missing, not the object it is missing from
        where = f"{where}.{missing.group(1)}" if where else missing.group(1)
    param = where
    param = param.replace("[...]", "")  # a mapping's key: name the mapping
    return (f"Invalid `{param}`: {text}" if param else text), (param or None)


def handle_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    type_, code = _HTTP_TYPES.get(status, ("server_error", None))
    message = exc.detail if status < 500 else "Internal server error"
    # The router's own answers name nothing; say which request missed.
    if isinstance(exc, NotFoundException) and exc.detail == "Not Found":
        message = f"{request.method} {request.url.path} is not an endpoint of this server"
    elif isinstance(exc, MethodNotAllowedException):
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(request, status, message, type_=type_, code=code, headers=exc.headers)


def handle_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        request, 500, "Internal server error", type_="server_error", code="internal_error"
    )


EXCEPTION_HANDLERS = {
    MlxRouterError: handle_domain_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected_error,
}
