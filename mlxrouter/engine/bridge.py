"""The bridge between the engine thread and the event loops that await it.

Commands go to the engine thread through its queue; results come back through futures settled
on their own loop (`resolve`, `reject`), and a request's events through its `GenerationStream`,
handed over in batches by the `Outbox`. This module imports no MLX: the loop side may use it
freely.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .types import Event, Finished

T = TypeVar("T")


@dataclass(slots=True)
class Command:
    """Work for the engine thread; its result (or exception) settles `future`."""

    run: Callable[[], Any]
    future: asyncio.Future[Any]


def resolve(future: asyncio.Future[T], result: T) -> None:
    """Engine thread: settle `future` with `result` on the event loop that awaits it."""
    future.get_loop().call_soon_threadsafe(_set_result, future, result)


def reject(future: asyncio.Future[Any], error: BaseException) -> None:
    """Engine thread: fail `future` with `error` on the event loop that awaits it."""
    future.get_loop().call_soon_threadsafe(_set_exception, future, error)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class Outbox:
    """Events the engine thread has produced since its last hand-off. They go to each event
    loop in one call per engine turn, not one per token: a batched step of N sequences wakes
    the loop once, and not at all while the loop has yet to take the previous hand-off (the
    events join it). `put` and `flush` run on the engine thread, `_take` on the loop."""

    def __init__(self) -> None:
        self._items: list[tuple[GenerationStream, Event | BaseException]] = []
        self._lock = threading.Lock()
        self._untaken: dict[asyncio.AbstractEventLoop, list[tuple[GenerationStream, Any]]] = {}

    def put(self, stream: GenerationStream, item: Event | BaseException) -> None:
        self._items.append((stream, item))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationStream, Any]]] = {}
        for stream, item in items:
            by_loop.setdefault(stream._loop, []).append((stream, item))
        for loop, batch in by_loop.items():
            with self._lock:
                if loop in self._untaken:  # a wake-up is on its way: ride along
                    self._untaken[loop].extend(batch)
                    continue
                self._untaken[loop] = batch
            try:
                loop.call_soon_threadsafe(self._take, loop)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                with self._lock:
                    self._untaken.pop(loop, None)
                for stream, _ in batch:
                    stream.cancelled = True

    def _take(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._untaken.pop(loop, [])
        for stream, item in batch:
            stream._queue.put_nowait(item)


class EventReader:
    """Reading a request's events off its queue (an exception in it is raised), up to and
    including `Finished`: the engine's streams and remote ones (`mlxrouter.remote`) alike."""

    _queue: asyncio.Queue[Event | BaseException]

    async def next_event(self) -> Event:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.next_event()
            yield event
            if isinstance(event, Finished):
                return


class GenerationStream(EventReader):
    """One request's channel from the engine thread to the event loop.

    The engine thread calls `emit`; the event loop iterates. `cancel()` (any thread) asks the
    engine to stop at its next token step, which frees the request's batch slot.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None], outbox: Outbox
    ) -> None:
        self._loop = loop
        self._wake = wake
        self._outbox = outbox
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.cancelled = False
        self.done = False

    def emit(self, item: Event | BaseException) -> None:
        """Engine thread only; delivered at the engine's next hand-off."""
        if isinstance(item, Finished | BaseException):
            self.done = True
        self._outbox.put(self, item)

    def cancel(self) -> None:
        if not self.done:
            self.cancelled = True
            self._wake()
