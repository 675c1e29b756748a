"""ASGI guards in front of the app: the Host allowlist (against DNS rebinding) and the write
timeout that cuts off a client that stopped reading. Both answer with the one error envelope.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable

from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from .envelopes import ApiError, error_bytes

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class SlowReaderError(Exception):
    """The client stopped reading a response for longer than the write timeout."""


def host_of(header: str) -> str:
    """`example.com:8080` -> `example.com`; `[::1]:8080` -> `::1`. Lower-cased."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_allowed_host(host: str, allowed: frozenset[str]) -> bool:
    """Loopback names and addresses always; anything else only when configured."""
    if "*" in allowed or host in allowed or host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _send_error(send: Send, status: int, body: bytes) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)


def host_allowlist(allowed_hosts: Iterable[str]) -> type:
    """Middleware refusing requests whose Host header is not a loopback name or address, the
    listening host, or a configured name: a web page's DNS-rebinding trick gets a 403."""
    allowed = frozenset(h.lower() for h in allowed_hosts)

    class HostAllowlist:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP:
                headers = dict(scope["headers"])
                host = host_of(headers.get(b"host", b"").decode("latin-1"))
                if not is_allowed_host(host, allowed):
                    error = ApiError(
                        status=403,
                        message="This Host is not allowed (add it to `allowed_hosts`)",
                        type="permission_error",
                        code="host_not_allowed",
                    )
                    await _send_error(send, 403, error_bytes(scope["path"], error))
                    return
            await self.app(scope, receive, send)

    return HostAllowlist


def write_timeout(seconds: float) -> type:
    """Middleware that fails a response whose client has not taken a chunk for `seconds`:
    the stream is cancelled and its lease released instead of waiting forever."""

    class WriteTimeout:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await self.app(scope, receive, send)
                return

            async def timed_send(message: Message) -> None:
                if message["type"] != "http.response.body":
                    await send(message)
                    return
                try:
                    await asyncio.wait_for(send(message), seconds)
                except TimeoutError:
                    log.warning("client stopped reading for %.0fs: closing its response", seconds)
                    raise SlowReaderError from None

            await self.app(scope, receive, timed_send)

    return WriteTimeout
