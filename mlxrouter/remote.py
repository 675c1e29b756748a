"""Forwarding one generation to a remote OpenAI-compatible server.

`forward()` turns an internal `GenerationRequest` into an OpenAI chat (or text) completion
request, always streamed, and returns a `RemoteStream`: the same `Started`, `Chunk`...,
`Finished` events an engine stream yields, read from the upstream's SSE lines as they arrive
(nothing is buffered beyond one line). `cancel()` closes the upstream connection, which stops
the upstream's generation. Failures become the upstream errors of `errors.py`, naming the
upstream, never its URL or key. No MLX here; the event loop only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .engine import Chunk, Finished, GenerationRequest, Started, TokenLogprob, ToolCall
from .engine.bridge import EventReader
from .engine.types import Event
from .errors import (
    ModelNotFoundError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

#: the most of an upstream's error body read to find its message
ERROR_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one forwarded request ended, for metrics and the upstream's up/down state."""

    upstream: str
    #: the upstream's HTTP status, or "unreachable", "timeout", "broken", "cancelled"
    status: str
    #: seconds from sending to the upstream's response headers (None if none came)
    response_seconds: float | None
    #: the upstream could not be reached at all: it is down
    unreachable: bool = False


def request_body(
    model: str, request: GenerationRequest, *, stream: bool = True, context: int | None = None
) -> dict[str, Any]:
    """The OpenAI body for `request` on the upstream's id `model` (whose context is `context`
    tokens, if known): chat when it has messages, a text completion otherwise. Fields at their
    defaults are left out, so servers that lack an extension (top_k, min_p,
    chat_template_kwargs) still accept the request."""
    body: dict[str, Any] = {"model": model, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    chat = request.messages is not None
    if chat:
        body["messages"] = [_openai_message(m) for m in request.messages or []]
    else:
        body["prompt"] = request.prompt
    if request.max_tokens is not None and not _capped(request, context):
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    sampling = request.sampling
    body["temperature"] = sampling.temperature
    body["top_p"] = sampling.top_p
    optional = {
        "top_k": sampling.top_k or None,
        "min_p": sampling.min_p or None,
        "repetition_penalty": sampling.repetition_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "seed": sampling.seed,
        "xtc_probability": sampling.xtc_probability or None,
        "xtc_threshold": sampling.xtc_threshold if sampling.xtc_probability else None,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias.items()}
    if request.logprobs is not None:
        if chat:
            body["logprobs"] = True
            if request.logprobs:
                body["top_logprobs"] = request.logprobs
        else:
            body["logprobs"] = request.logprobs
    if request.tools:
        body["tools"] = request.tools
        if request.tool_call_required:
            body["tool_choice"] = "required"
    if request.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": request.json_schema},
        }
    if request.chat_template_kwargs and chat:
        body["chat_template_kwargs"] = request.chat_template_kwargs
    return body


def _capped(request: GenerationRequest, context: int | None) -> bool:
    """A `max_tokens` to be capped to the context's room (Claude Code asks for 32000) that
    may not fit: left to the upstream's default, which fits its context, not refused."""
    limit = request.max_tokens or 0
    return request.cap_max_tokens and (context is None or limit >= context)


def _openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat-template message back in OpenAI's shape: tool-call arguments were decoded for
    the template; OpenAI sends them as JSON strings."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    encoded = []
    for call in calls:
        function = dict(call.get("function") or {})
        if not isinstance(function.get("arguments"), str):
            function["arguments"] = json.dumps(function.get("arguments") or {})
        encoded.append({**call, "function": function})
    return {**message, "tool_calls": encoded}


class ChunkReader:
    """The upstream's SSE `data:` payloads → events. Tool calls stream in pieces (their id
    and name, then argument fragments) and are handed on whole when the choice finishes."""

    def __init__(self, upstream: str, *, chat: bool) -> None:
        self._upstream = upstream
        self._chat = chat
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}
        self._calls: dict[int, dict[str, str]] = {}
        self.finished = False

    def feed(self, line: str) -> list[Chunk | Finished]:
        """One line of the event stream; comments, `event:` lines and blank lines give none."""
        if not line.startswith("data:"):
            return []
        payload = line[5:].strip()
        if payload == "[DONE]":
            return [self._finished()]
        try:
            data = json.loads(payload)
        except ValueError:
            raise UpstreamError(
                f"The upstream `{self._upstream}` sent a stream chunk that is not JSON"
            ) from None
        if not isinstance(data, dict):
            return []
        if "error" in data:
            raise UpstreamError(f"The upstream `{self._upstream}` failed: {_message(data)}")
        if isinstance(data.get("usage"), dict):
            self._usage = data["usage"]
        events: list[Chunk | Finished] = []
        for choice in data.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            chunk = self._chat_chunk(choice) if self._chat else self._text_chunk(choice)
            if chunk is not None:
                events.append(chunk)
            if choice.get("finish_reason"):
                self._finish_reason = str(choice["finish_reason"])
        return events

    def _chat_chunk(self, choice: dict[str, Any]) -> Chunk | None:
        delta = choice.get("delta") or {}
        for call in delta.get("tool_calls") or []:
            self._add_call_piece(call)
        text = delta.get("content") or ""
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        logprobs = _chat_logprobs(choice.get("logprobs"))
        if not (text or reasoning or logprobs):
            return None
        return Chunk(text=text, reasoning=reasoning, logprobs=logprobs)

    def _text_chunk(self, choice: dict[str, Any]) -> Chunk | None:
        text = choice.get("text") or ""
        logprobs = _text_logprobs(choice.get("logprobs"))
        return Chunk(text=text, logprobs=logprobs) if text or logprobs else None

    def _add_call_piece(self, piece: dict[str, Any]) -> None:
        call = self._calls.setdefault(
            int(piece.get("index") or 0), {"id": "", "name": "", "arguments": ""}
        )
        function = piece.get("function") or {}
        call["id"] = piece.get("id") or call["id"]
        call["name"] = function.get("name") or call["name"]
        call["arguments"] += function.get("arguments") or ""

    def _finished(self) -> Chunk | Finished:
        if self._calls:  # the calls first, as one chunk; [DONE] comes again for Finished
            calls = tuple(
                ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"])
                for i, c in sorted(self._calls.items())
            )
            self._calls = {}
            self._finish_reason = self._finish_reason or "tool_calls"
            return Chunk(text="", tool_calls=calls)
        self.finished = True
        usage = self._usage
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return Finished(
            finish_reason=self._finish_reason or "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )


def _chat_logprobs(logprobs: Any) -> tuple[TokenLogprob, ...]:
    if not isinstance(logprobs, dict):
        return ()
    return tuple(
        TokenLogprob(
            token=str(item.get("token", "")),
            logprob=float(item.get("logprob", 0.0)),
            top=tuple(
                (str(top.get("token", "")), float(top.get("logprob", 0.0)))
                for top in item.get("top_logprobs") or []
            ),
        )
        for item in logprobs.get("content") or []
    )


def _text_logprobs(logprobs: Any) -> tuple[TokenLogprob, ...]:
    if not isinstance(logprobs, dict):
        return ()
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        TokenLogprob(
            token=str(token),
            logprob=float(value or 0.0),
            top=tuple((str(t), float(lp)) for t, lp in (top or {}).items()),
        )
        for token, value, top in zip(tokens, values, tops, strict=False)
    )


def _message(data: Any) -> str:
    """The message of an OpenAI-shaped (or Anthropic- or Ollama-shaped) error body."""
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("detail"):  # FastAPI's (vLLM's) validation errors
            return str(data["detail"])[:500]
    return "no message"


def status_error(upstream: str, status: int, body: bytes) -> Exception:
    """The error for an upstream's non-200 answer, its own message passed on."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    message = _message(data)
    param = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        param = data["error"].get("param")
    if status == 404:
        return ModelNotFoundError(f"The upstream `{upstream}` says: {message}", param="model")
    if status in (429, 503):
        return UpstreamBusyError(f"The upstream `{upstream}` is busy: {message}")
    if status in (401, 403):
        return UpstreamError(f"The upstream `{upstream}` refused this server's API key")
    if 400 <= status < 500:
        return UpstreamRejectedError(f"The upstream `{upstream}`: {message}", param=param)
    return UpstreamError(f"The upstream `{upstream}` failed ({status}): {message}")


def transport_error(upstream: str, exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(f"The upstream `{upstream}` did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailableError(f"The upstream `{upstream}` is unreachable")
    return UpstreamUnavailableError(f"The connection to the upstream `{upstream}` was lost")


class RemoteStream(EventReader):
    """One forwarded request's events, with the interface of the engine's `GenerationStream`
    (`next_event`, iteration, `cancel`). A task reads the upstream's response into a queue."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        upstream: str,
        body: dict[str, Any],
        report: Callable[[Outcome], None],
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._body = body
        self._report = report
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.done = False
        self._task = asyncio.create_task(self._run(), name=f"upstream-{upstream}")

    def cancel(self) -> None:
        """Close the upstream connection: the upstream sees its client go and stops."""
        if not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        path = "chat/completions" if "messages" in self._body else "completions"
        started = time.perf_counter()
        seconds: float | None = None
        status = "broken"
        unreachable = False
        try:
            async with self._client.stream("POST", path, json=self._body) as response:
                seconds = time.perf_counter() - started
                status = str(response.status_code)
                if response.status_code != 200:
                    body = await _head(response)
                    self._fail(status_error(self._upstream, response.status_code, body))
                    return
                self._queue.put_nowait(Started(prompt_tokens=0))
                await self._read(response)
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except httpx.HTTPError as exc:
            error = transport_error(self._upstream, exc)
            status = "timeout" if isinstance(error, UpstreamTimeoutError) else "unreachable"
            unreachable = isinstance(exc, httpx.ConnectError)
            self._fail(error)
        except Exception as exc:  # noqa: BLE001 - every failure reaches the stream's reader
            self._fail(exc)
        finally:
            self.done = True
            self._report(Outcome(self._upstream, status, seconds, unreachable))

    async def _read(self, response: httpx.Response) -> None:
        reader = ChunkReader(self._upstream, chat="messages" in self._body)
        async for line in response.aiter_lines():
            for event in reader.feed(line):
                self._queue.put_nowait(event)
            if reader.finished:
                return
        # A stream that ends without [DONE] (mlx_lm.server before usage chunks) still ends.
        while not reader.finished:
            self._queue.put_nowait(reader.feed("data: [DONE]")[0])

    def _fail(self, error: BaseException) -> None:
        self._queue.put_nowait(error)


async def _head(response: httpx.Response) -> bytes:
    """The start of an error body: enough for its message, bounded."""
    data = b""
    async for piece in response.aiter_bytes():
        data += piece
        if len(data) >= ERROR_BODY_BYTES:
            break
    return data[:ERROR_BODY_BYTES]


def forward(
    client: httpx.AsyncClient,
    upstream: str,
    model: str,
    request: GenerationRequest,
    report: Callable[[Outcome], None],
    *,
    context: int | None = None,
) -> RemoteStream:
    """Start forwarding `request` to the upstream's id `model`; the first event (`Started`)
    comes once the upstream has accepted it, an error instead if it refused."""
    return RemoteStream(client, upstream, request_body(model, request, context=context), report)
