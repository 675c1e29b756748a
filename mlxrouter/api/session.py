"""One completion request's life in one object: its target, lease, engine streams and access
record, from `open()` to `close()`.

A request with N prompts (`/v1/completions` with a list) runs N engine streams under one lease;
they are submitted together, so the engine prefills them as one batch. `full()` gathers the
answers, `sse()` yields SSE chunks as they come. `close()` cancels what still runs and releases
the lease; it is idempotent and is called explicitly (by the route for whole answers, by
`SessionStream` when a streamed response ends for any reason), never left to the garbage
collector.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from litestar import Request
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from ..daemon import Daemon
from ..engine import Chunk, Finished, GenerationRequest, GenerationStream
from ..errors import ClientDisconnectedError, EngineError, MlxRouterError
from . import convert
from .access import RequestRecord
from .errors import status_of

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class CompletionSession:
    """Event-loop side. `open()` resolves, leases and starts generating; then exactly one of
    `full()` or `sse()`; `close()` always."""

    def __init__(
        self,
        daemon: Daemon,
        kind: str,
        *,
        model: str | None,
        adapters: str | None,
        keep_alive: str | float | None,
        logprobs: bool,
    ) -> None:
        self.daemon = daemon
        self.kind = kind
        self.logprobs = logprobs
        self.record = RequestRecord(daemon, kind)
        self._model = model
        self._adapters = adapters
        self._keep_alive = keep_alive
        self._stack = AsyncExitStack()
        self._streams: list[GenerationStream] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._closed = False
        self._meta: convert.ResponseMeta | None = None

    async def open(self, generations: Sequence[GenerationRequest]) -> None:
        """Resolve the model, take the lease (loading it if needed) and submit every prompt;
        returns once the engine has accepted them all. On failure the session is closed."""
        try:
            target = self.daemon.target(self._model, self._adapters)
            self.record.resolved(target.requested)
            for generation in generations:
                self.record.log_prompt(generation)
            keep_alive = convert.keep_alive_seconds(self._keep_alive)
            lease = await self._stack.enter_async_context(
                self.daemon.lease(target, keep_alive=keep_alive)
            )
            self.record.leased(lease)
            temperature = self.daemon.default_temperature(target)
            for generation in generations:
                if generation.sampling.temperature is None:
                    sampling = replace(generation.sampling, temperature=temperature)
                    generation = replace(generation, sampling=sampling)  # noqa: PLW2901
                stream = await self.daemon.generate(lease, generation)
                self._streams.append(stream)
            for stream in self._streams:
                await stream.next_event()  # Started: the prompt was accepted
        except BaseException as exc:
            status = status_of(exc) if isinstance(exc, MlxRouterError) else 500
            await self.close(status)
            raise
        self._meta = convert.ResponseMeta(kind=self.kind, model=target.requested)

    def _opened(self) -> convert.ResponseMeta:
        if self._meta is None:
            raise RuntimeError("CompletionSession.open() was not called")
        return self._meta

    async def close(self, status: int | None = None, finished: Sequence[Finished] = ()) -> None:
        """Cancel the streams still generating and release the lease; records the request
        (499, client gone, unless a status is given). Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            stream.cancel()
        for pump in self._pumps:
            pump.cancel()
        await self._stack.aclose()
        self.record.done(499 if status is None else status, finished)

    # ---- whole answers -------------------------------------------------------------------------

    async def full(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Gather every answer. A client that disconnects meanwhile stops the generation."""
        meta = self._opened()
        try:
            answers = await self._gather_unless_gone(request)
        except BaseException as exc:
            await self.close(status_of(exc) if isinstance(exc, MlxRouterError) else 500)
            raise
        await self.close(200, [finished for _, finished in answers])
        return convert.full_response(meta, answers, logprobs=self.logprobs)

    async def _gather_unless_gone(
        self, request: Request[Any, Any, Any]
    ) -> list[tuple[list[Chunk], Finished]]:
        collect = asyncio.ensure_future(
            asyncio.gather(*(self._collect(stream) for stream in self._streams))
        )
        gone = asyncio.ensure_future(_disconnected(request))
        waiting: set[asyncio.Future[Any]] = {collect, gone}
        left = False
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not collect.done():  # the client left first (or this task was cancelled)
                left = True
                collect.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collect
        if left:
            raise ClientDisconnectedError("The client closed the connection")
        return collect.result()

    async def _collect(self, stream: GenerationStream) -> tuple[list[Chunk], Finished]:
        chunks: list[Chunk] = []
        async for event in stream:
            if isinstance(event, Chunk):
                self.record.first_token()
                chunks.append(event)
            elif isinstance(event, Finished):
                return chunks, event
        raise EngineError("The generation ended without finishing")

    # ---- streams -------------------------------------------------------------------------------

    async def sse(self, *, include_usage: bool) -> AsyncIterator[bytes]:
        """SSE chunks of every prompt as they come (each with its choice index), then usage and
        `[DONE]`. An engine error after the headers went out is reported in-band, as OpenAI
        does."""
        meta = self._opened()
        merged: asyncio.Queue[tuple[int, Chunk | Finished | BaseException]] = asyncio.Queue()
        self._pumps = [
            asyncio.create_task(_pump(index, stream, merged))
            for index, stream in enumerate(self._streams)
        ]
        try:
            for index in range(len(self._streams)):
                yield convert.chunk_event(meta, text="", index=index, first=True)
            offsets = [0] * len(self._streams)
            calls = [0] * len(self._streams)
            finished: list[Finished | None] = [None] * len(self._streams)
            while not all(finished):
                index, event = await merged.get()
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Chunk):
                    self.record.first_token()
                    numbered = [(calls[index] + i, c) for i, c in enumerate(event.tool_calls)]
                    calls[index] += len(numbered)
                    yield convert.chunk_event(
                        meta,
                        text=event.text,
                        index=index,
                        logprobs=event.logprobs if self.logprobs else None,
                        offset=offsets[index],
                        tool_calls=numbered,
                    )
                    offsets[index] += len(event.text)
                else:
                    finished[index] = event
                    yield convert.chunk_event(
                        meta, text=None, index=index, finish_reason=event.finish_reason
                    )
            done = [f for f in finished if f is not None]
            if include_usage:
                yield convert.usage_event(meta, done)
            yield convert.SSE_DONE
            await self.close(200, done)
        except EngineError as exc:
            yield convert.sse(convert.error_body(exc))
            await self.close(500)


async def _pump(
    index: int,
    stream: GenerationStream,
    into: asyncio.Queue[tuple[int, Chunk | Finished | BaseException]],
) -> None:
    """Move one stream's events into the merged queue, tagged with its choice index."""
    try:
        async for event in stream:
            if isinstance(event, Chunk | Finished):
                into.put_nowait((index, event))
    except MlxRouterError as exc:
        into.put_nowait((index, exc))


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    """Returns when the client has gone away (the body was read already, so the next ASGI
    message can only be the disconnect)."""
    with contextlib.suppress(Exception):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        return
    await asyncio.Event().wait()  # the connection cannot tell: never report a disconnect


class SessionStream(Stream):
    """A streamed answer whose session is closed when the response ends, whichever way: all
    sent, the client gone (Litestar cancels the sending task), or a write that failed."""

    def __init__(self, session: CompletionSession, *, include_usage: bool) -> None:
        super().__init__(
            session.sse(include_usage=include_usage),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
        self.session = session

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        return _ClosingResponse(super().to_asgi_response(*args, **kwargs), self.session.close)


class _ClosingResponse(ASGIResponse):
    """Sends `inner`, then runs `close` however sending ended."""

    def __init__(self, inner: ASGIResponse, close: Callable[[], Awaitable[None]]) -> None:
        # Everything is delegated to `inner`; this only adds the `finally`.
        self._inner = inner
        self._close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            await self._close()
