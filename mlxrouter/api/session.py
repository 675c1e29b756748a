"""One completion request's life in one object: its target, lease, engine streams and access
record, from `open()` to `close()`.

A request with N prompts (`/v1/completions` with a list) runs N engine streams under one lease;
they are submitted together, so the engine prefills them as one batch. `answers()` gathers the
whole answers, `events()` yields the events as they come; each API surface formats them in its
own shape. `close()` cancels what still runs and releases the lease; it is idempotent and is
called explicitly (by `answers()`, by the surface's stream at its end, and by `SessionStream`
when a streamed response ends for any reason), never left to the garbage collector.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any, TypeVar, overload

from litestar import Request
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from ..config import ImagesConfig, ModelSettings
from ..daemon import Daemon
from ..discovery import ModelType
from ..engine import (
    Chunk,
    Embedded,
    EmbeddingRequest,
    Finished,
    GenerationRequest,
    GenerationStream,
    ImageInput,
    Started,
)
from ..errors import ClientDisconnectedError, EngineError, InvalidRequestError, MlxRouterError
from ..images import ImageRef, fetch_urls, load_inline
from ..remote import RemoteStream
from ..targets import Target, check_serves
from ..units import Duration
from .access import RequestRecord
from .errors import status_of

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


#: the engine's events for a local model, the upstream's for a remote one
EventStream = GenerationStream | RemoteStream

#: one choice's whole answer: its chunks and how it finished
Answer = tuple[list[Chunk], Finished]

#: what a surface hands the engine: generations, or inputs to embed
EngineRequest = GenerationRequest | EmbeddingRequest


class CompletionSession:
    """Event-loop side, and the same for every API surface: `open()` resolves, leases and
    starts generating; then `answers()` (whole answers) or `events()` (as they come); `close()`
    always. Surfaces format what it yields in their own shapes."""

    def __init__(
        self,
        daemon: Daemon,
        kind: str,
        *,
        model: str | None,
        adapters: str | None,
        keep_alive: Duration | None,
        serves: ModelType = "chat",
    ) -> None:
        self.daemon = daemon
        #: the type of model this request needs (another type is a 400 naming what it is)
        self.serves = serves
        self.record = RequestRecord(daemon, kind)
        self._model = model
        self._adapters = adapters
        self._keep_alive = keep_alive
        self._stack = AsyncExitStack()
        self._streams: list[EventStream] = []
        #: each stream's `Started` (its prompt's tokens), once `open()` returned
        self.started: list[Started] = []
        self._finished: list[Finished | None] = []
        self._pumps: list[asyncio.Task[None]] = []
        self._closed = False
        #: the id the request asked for (an alias stays an alias), once resolved
        self.model = ""

    @property
    def choices(self) -> int:
        return len(self._streams)

    async def open(
        self,
        build: Callable[[ModelSettings], Sequence[EngineRequest]],
        images: Sequence[ImageRef] = (),
    ) -> None:
        """Resolve the model, turn the request into engine requests with `build` (given the
        model's request defaults) with its `images` (checked, fetched, `request_images`),
        take the lease (loading it if needed) and submit them all; returns once the engine
        has accepted them. On failure the session is closed."""
        try:
            target = self.daemon.target(self._model, self._adapters)
            self.model = target.requested
            self.record.resolved(target.requested)
            check_serves(target, self.serves)
            loaded = await request_images(self.daemon.config.images, target, images)
            generations = with_images(build(self.daemon.settings(target)), loaded)
            for generation in generations:
                self.record.log_prompt(generation)
            first = generations[0] if generations else None  # none: a load only
            lease = await self._stack.enter_async_context(  # with its draft model, if any
                self.daemon.lease(
                    target,
                    keep_alive=self._keep_alive,
                    request=first if isinstance(first, GenerationRequest) else None,
                )
            )
            self.record.leased(lease)
            for generation in generations:
                self._streams.append(await self.daemon.generate(lease, generation))
            self._finished = [None] * len(self._streams)
            for stream in self._streams:
                started = await stream.next_event()  # Started: the prompt was accepted
                if isinstance(started, Started):
                    self.started.append(started)
        except BaseException as exc:
            await self.failed(exc)
            raise
        if self._closed:  # closed while this waited (a streamed answer's client left)
            await self.close()  # lets go of what this took since
            raise ClientDisconnectedError("The client closed the connection")

    async def failed(self, exc: BaseException) -> None:
        """Close, recording the failure's status and message (a domain error's own message;
        anything else is only "internal error": its text may name paths)."""
        if isinstance(exc, MlxRouterError):
            await self.close(status_of(exc), error=str(exc))
        else:
            await self.close(500, error="internal error")

    async def close(
        self,
        status: int | None = None,
        finished: Sequence[Finished] = (),
        *,
        error: str | None = None,
    ) -> None:
        """Cancel the streams still generating and release the lease; records the request
        (499, client gone, unless a status is given). Safe to call more than once: a later
        call releases what an `open()` still running at the first one took since."""
        first = not self._closed
        self._closed = True
        for stream in self._streams:
            stream.cancel()
        for pump in self._pumps:
            pump.cancel()
        await self._stack.aclose()
        if first:
            self.record.done(499 if status is None else status, finished, error)

    def finished(self) -> list[Finished]:
        """How each choice finished (after `events()` has ended)."""
        return [done for done in self._finished if done is not None]

    # ---- whole answers -------------------------------------------------------------------------

    async def answers(self, request: Request[Any, Any, Any]) -> list[Answer]:
        """Every choice's whole answer, in order; recorded as 200. A client that disconnects
        meanwhile stops the generation (`ClientDisconnectedError`)."""
        try:
            answers = await self._gather_unless_gone(request, self._collect)
        except BaseException as exc:
            await self.failed(exc)
            raise
        await self.close(200, [finished for _, finished in answers])
        return answers

    async def embeddings(self, request: Request[Any, Any, Any]) -> Embedded:
        """An embedding request's vectors (one stream); recorded as 200. A client that
        disconnects meanwhile drops its inputs still queued (`ClientDisconnectedError`)."""
        try:
            (embedded,) = await self._gather_unless_gone(request, self._embedded)
        except BaseException as exc:
            await self.failed(exc)
            raise
        finished = Finished("stop", embedded.prompt_tokens, 0)
        await self.close(200, [finished])
        return embedded

    async def _embedded(self, stream: EventStream) -> Embedded:
        async for event in stream:
            if isinstance(event, Embedded):
                return event
        raise EngineError("The embedding ended without its vectors")

    async def _gather_unless_gone(
        self,
        request: Request[Any, Any, Any],
        collector: Callable[[EventStream], Awaitable[T]],
    ) -> list[T]:
        collect = asyncio.ensure_future(
            asyncio.gather(*(collector(stream) for stream in self._streams))
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

    async def _collect(self, stream: EventStream) -> Answer:
        chunks: list[Chunk] = []
        async for event in stream:
            if isinstance(event, Chunk):
                self.record.first_token()
                chunks.append(event)
            elif isinstance(event, Finished):
                return chunks, event
        raise EngineError("The generation ended without finishing")

    # ---- as they come --------------------------------------------------------------------------

    @overload
    def events(self) -> AsyncIterator[tuple[int, Chunk | Finished]]: ...

    @overload
    def events(self, heartbeat: float) -> AsyncIterator[tuple[int, Chunk | Finished] | None]: ...

    async def events(
        self, heartbeat: float | None = None
    ) -> AsyncIterator[tuple[int, Chunk | Finished] | None]:
        """Every choice's events as they come, tagged with the choice's index, until each has
        finished. An engine error is raised. With a `heartbeat`, None is yielded after that
        many seconds without an event (a long prefill), and the wait goes on."""
        merged: asyncio.Queue[tuple[int, Chunk | Finished | BaseException]] = asyncio.Queue()
        self._pumps = [
            asyncio.create_task(_pump(index, stream, merged))
            for index, stream in enumerate(self._streams)
        ]
        while not all(self._finished):
            if heartbeat is None:
                index, event = await merged.get()
            else:
                try:  # a timed-out get() takes nothing from the queue; the pumps go on
                    index, event = await asyncio.wait_for(merged.get(), heartbeat)
                except TimeoutError:
                    yield None
                    continue
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, Chunk):
                self.record.first_token()
            else:
                self._finished[index] = event
            yield index, event


async def request_images(
    limits: ImagesConfig, target: Target, refs: Sequence[ImageRef]
) -> tuple[ImageInput, ...]:
    """A request's images, verified: inline ones decoded and checked first (so a bad image is
    named as such whatever the model), then refused unless the model is a vision model (never
    dropped), then URLs fetched (only for a model that takes them)."""
    if not refs:
        return ()
    checked = await load_inline(refs, limits)
    where = refs[0].where
    if target.model.remote is not None:  # `remote.request_body` sends text only
        raise InvalidRequestError(
            f"`{target.requested}` is served by an upstream, and images are not forwarded to "
            f"upstreams (the image at {where})",
            param=where,
        )
    if target.model.found.model_type != "vision":
        raise InvalidRequestError(
            f"`{target.requested}` does not take images (the image at {where}): it is not a "
            "vision model",
            param=where,
        )
    return await fetch_urls(checked, limits)


def with_images(
    requests: Sequence[EngineRequest], images: tuple[ImageInput, ...]
) -> Sequence[EngineRequest]:
    """`requests` with the request's images on its generations (its `{"type": "image"}`
    parts are in their messages already)."""
    if not images:
        return requests
    return [replace(r, images=images) if isinstance(r, GenerationRequest) else r for r in requests]


async def _pump(
    index: int,
    stream: EventStream,
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

    def __init__(
        self, session: CompletionSession, body: AsyncIterator[bytes], *, media_type: str
    ) -> None:
        super().__init__(body, media_type=media_type, headers=SSE_HEADERS)
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
