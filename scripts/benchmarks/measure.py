"""Timed requests: one completion (plain or streamed) over HTTP, one GET straight through an
ASGI app, and the records they produce."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from .common import HOST


@dataclass
class Timed:
    seconds: float
    tokens: int
    ttft: float | None = None
    decode_rate: float | None = None  # tokens/s after the first token
    cached: int = 0  # prompt tokens the server took from its prompt cache


@dataclass
class Burst:
    """Concurrent clients' results: wall time to the last answer, tokens, cached tokens, the
    slowest client's time, and the time until every client had its first token."""

    wall: float
    tokens: int
    cached: int
    slowest: float
    prefill: float  # until the last client's first token
    first: float  # until the first client's first token
    tokens_after_first: int = 0

    @property
    def rate(self) -> float:
        return self.tokens / self.wall

    @property
    def decode_rate(self) -> float:
        """Tokens/s once every client had its first token (each client's first excluded)."""
        return self.tokens_after_first / max(self.wall - self.prefill, 1e-9)

    @staticmethod
    def median(bursts: list[Burst]) -> Burst:
        """The burst with the median aggregate rate."""
        return sorted(bursts, key=lambda b: b.rate)[len(bursts) // 2]


def timed(started: float, first: float | None, tokens: int) -> Timed:
    ended = time.perf_counter()
    first = first or ended
    rate = (tokens - 1) / (ended - first) if tokens > 1 and ended > first else None
    return Timed(ended - started, tokens, first - started, rate)


def _cached(usage: dict[str, Any]) -> int:
    details = usage.get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def completion(client: httpx.Client, body: dict[str, Any], path: str = "/v1/completions") -> Timed:
    started = time.perf_counter()
    response = client.post(path, json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{path} -> {response.status_code}: {response.text[:300]}")
    usage = response.json().get("usage") or {}
    return Timed(seconds, int(usage.get("completion_tokens", 0)), cached=_cached(usage))


def streamed_completion(client: httpx.Client, body: dict[str, Any]) -> Timed:
    """A streamed text completion: time to the first text, and the decode rate after it."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"stream -> {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            if first is None and any(c.get("text") for c in event.get("choices") or []):
                first = time.perf_counter()
    ended = time.perf_counter()
    tokens = int(usage.get("completion_tokens", 0))
    first = ended if first is None else first
    rate = (tokens - 1) / (ended - first) if tokens > 1 and ended > first else None
    return Timed(ended - started, tokens, first - started, rate, _cached(usage))


async def asgi_get(app: Any, path: str) -> tuple[float, int]:
    """One GET straight through an ASGI app (no server, no socket): seconds and body bytes."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080")],
        "client": (HOST, 50000),
        "server": (HOST, 8080),
    }
    body = bytearray()
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    started = time.perf_counter()
    await app(scope, receive, send)
    seconds = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"in-process GET {path} -> {status}: {bytes(body[:200])!r}")
    return seconds, len(body)
