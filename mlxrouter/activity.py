"""Live activity for the dashboard: a ring of the last requests and one feed of events (pool
changes, requests started and finished, log lines) that `/admin/events` streams.

Everything here runs on the event loop but `LogFeed.emit`, which any thread may call and which
hands its line to the loop. Each subscriber has a bounded queue: a subscriber that falls behind
loses events (counted) rather than growing memory or slowing whoever publishes. No HTTP here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any, NamedTuple

import msgspec

from .status import ActivityAnswer, ActivityRecord

#: events a subscriber may have waiting before newer ones are dropped
QUEUE_SIZE = 256
#: the longest prompt text kept in a record (the ring's memory stays bounded)
PROMPT_CHARS = 4000


class Event(NamedTuple):
    """One published event: its name and its data, JSON-encoded once for every subscriber."""

    name: str
    data: bytes


class Subscription:
    """One reader of the feed. `next()` waits for an event; None means the feed closed."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=size)
        self.dropped = 0
        self.closed = False

    def offer(self, event: Event | None) -> bool:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            if event is not None:
                self.dropped += 1
                return False
            self._queue.get_nowait()  # the end mark always gets in, in place of an event
            self._queue.put_nowait(None)
        return True

    async def next(self, timeout: float) -> Event | None:
        """The next event, or a `heartbeat` one after `timeout` seconds of silence."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None if self.closed else heartbeat(self.dropped)


def heartbeat(dropped: int) -> Event:
    return encode("heartbeat", {"time": round(time.time(), 3), "dropped": dropped})


def encode(name: str, data: object) -> Event:
    return Event(name, msgspec.json.encode(data))


class Activity:
    """The ring (`ui.history` records) and the subscribers of the feed. Event-loop side."""

    def __init__(self, history: int, queue_size: int = QUEUE_SIZE) -> None:
        self._ring: deque[ActivityRecord] = deque(maxlen=history)
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._closed = False
        #: events lost by subscribers gone since (the live ones count their own)
        self._dropped_before = 0
        self._next_id = 0

    @property
    def history(self) -> int:
        return self._ring.maxlen or 0

    def resize(self, history: int) -> None:
        """A config edit: keep the newest records that fit."""
        if history != self.history:
            self._ring = deque(self._ring, maxlen=history)

    def request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    @property
    def dropped(self) -> int:
        return self._dropped_before + sum(s.dropped for s in self._subscribers)

    def answer(self) -> ActivityAnswer:
        return ActivityAnswer(
            requests=list(self._ring), dropped_events=self.dropped, history=self.history
        )

    # ---- publishing ----------------------------------------------------------------------------

    def publish(self, name: str, data: object) -> None:
        """Offer an event to every subscriber; never blocks, never logs (the log feeds it)."""
        if not self._subscribers or self._closed:
            return
        event = encode(name, data)
        for subscriber in self._subscribers:
            subscriber.offer(event)

    def started(self, data: dict[str, Any]) -> None:
        self.publish("request.started", data)

    def finished(self, record: ActivityRecord) -> None:
        self._ring.append(record)
        self.publish("request.finished", record)

    def pool_changed(self, key: str, state: str, in_flight: int) -> None:
        """The pool's listener (`Pool.listener`)."""
        data = {"time": round(time.time(), 3), "id": key, "state": state, "in_flight": in_flight}
        self.publish("pool", data)

    # ---- subscribers ---------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        subscription = Subscription(self._queue_size)
        if self._closed:
            subscription.closed = True
            subscription.offer(None)
        else:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.discard(subscription)
            self._dropped_before += subscription.dropped

    def close(self) -> None:
        """Drain or shutdown: every stream ends, and later subscribers end at once."""
        self._closed = True
        for subscription in self._subscribers:
            subscription.closed = True
            subscription.offer(None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class LogFeed(logging.Handler):
    """Log lines onto the feed as `log` events. `emit` runs on whichever thread logged; lines
    from other threads reach the loop with one `call_soon_threadsafe` each."""

    def __init__(self, activity: Activity, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._activity = activity
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if not self._activity.subscribers:  # nobody listens: no formatting, no loop wake-up
            return
        # lines about one model carry it (`extra={"model": id}`): the access log's do
        model = getattr(record, "model", None)
        try:
            data = {
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
                "model": model if isinstance(model, str) else None,
            }
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            return
        if threading.get_ident() == self._loop_thread:
            self._activity.publish("log", data)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self._loop.call_soon_threadsafe(self._activity.publish, "log", data)
