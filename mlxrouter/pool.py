"""The model pool: which models and adapters are loaded, who is using them, and what to evict.

All pool state lives on the event loop and is changed only between awaits, so it needs no
lock. Loads and unloads go to the engine thread through the small `Loader` protocol (tests
record them with a fake). A request holds a lease for its whole life, streaming included; an
entry with leases is never evicted. Concurrent requests for one unloaded entry share a single
load. When no entry can be evicted, requests wait (bounded count and time), then fail with
`PoolBusyError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from .engine import LoadSpec, ModelInfo
from .errors import EntryBusyError, ModelTooLargeError, PoolBusyError
from .eviction import Resident, choose_victims, over_limits

log = logging.getLogger(__name__)


class Loader(Protocol):
    """The effects the pool asks for. The engine implements it."""

    async def load(self, spec: LoadSpec) -> ModelInfo: ...
    async def unload(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_models: int = 2
    max_bytes: int | None = None
    #: seconds an idle entry stays loaded; infinity (`Duration.FOREVER`): until evicted
    idle_ttl: float = math.inf
    queue_timeout: float = 30.0
    max_queue: int = 64
    #: bytes each entry may grow by after loading (its prompt cache), counted in max_bytes
    entry_overhead: int = 0


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """What a request needs loaded; `estimated_bytes` comes from the weight files."""

    spec: LoadSpec
    estimated_bytes: int
    pinned: bool = False
    #: seconds idle before unloading; None: the pool's idle_ttl
    ttl: float | None = None
    #: adapters: the base model, loaded first; the adapter shares its arrays
    base: LeaseRequest | None = None
    #: per request (Ollama's keep_alive): None keeps the entry's lifetime, forever (infinity)
    #: pins it, 0 unloads it once idle, > 0 unloads it after that many idle seconds
    keep_alive: float | None = None


@dataclass(slots=True)
class PoolEntry:
    key: str
    spec: LoadSpec
    info: ModelInfo | None = None  # None while loading
    nbytes: int = 0
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    pinned: bool = False
    ttl: float | None = None
    load_task: asyncio.Future[ModelInfo] | None = None
    #: its files changed or it left the registry: serve no new request, unload once idle
    stale: bool = False

    @property
    def loaded(self) -> bool:
        return self.info is not None

    @property
    def base_key(self) -> str | None:
        return self.spec.base_key


@dataclass(frozen=True, slots=True)
class Lease:
    """What a request gets: the engine key to generate with, and whether it waited on a load."""

    key: str
    info: ModelInfo
    loaded_now: bool


#: told of each entry's change, on the event loop: (key, state, requests in flight); states are
#: "loading", "loaded", "failed", "serving", "idle", "unloaded" and "evicted"
PoolListener = Callable[[str, str, int], None]


class Pool:
    def __init__(self, loader: Loader, limits: PoolLimits) -> None:
        self._loader = loader
        #: the daemon's live-events feed; it must not raise or await
        self.listener: PoolListener | None = None
        self.limits = limits
        self._entries: dict[str, PoolEntry] = {}
        self._room = asyncio.Condition()
        self._waiting = 0
        self.loads = 0
        self.evictions = 0

    # ---- reading -----------------------------------------------------------------------------

    def entries(self) -> list[PoolEntry]:
        return list(self._entries.values())

    def is_loaded(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.loaded

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def used_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def expires_in(self, entry: PoolEntry, now: float | None = None) -> float | None:
        """Seconds until an idle entry's ttl unloads it; None if it never expires (or is busy)."""
        ttl = entry.ttl if entry.ttl is not None else self.limits.idle_ttl
        if math.isinf(ttl) or entry.pinned or entry.in_flight or not entry.loaded:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, entry.last_used + ttl - now)

    # ---- leasing -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, request: LeaseRequest) -> AsyncIterator[Lease]:
        """Hold the entry loaded for the duration of the `async with` block."""
        entry, info, loaded_now = await self._acquire(request)
        try:
            yield Lease(entry.key, info, loaded_now)
        finally:
            entry.in_flight -= 1
            entry.last_used = time.monotonic()
            self._tell(entry.key, "serving" if entry.in_flight else "idle", entry.in_flight)
            await self._apply_keep_alive(entry, request.keep_alive)
            await self._drop_stale()
            # Limits lowered while this entry was busy take effect once it is idle.
            await self._enforce_limits()
            await self._notify()

    async def _apply_keep_alive(self, entry: PoolEntry, keep_alive: float | None) -> None:
        if keep_alive is None:
            return
        if math.isinf(keep_alive):
            entry.pinned = True
            return
        entry.pinned = False
        entry.ttl = keep_alive
        if keep_alive == 0 and entry.in_flight == 0 and self._entries.get(entry.key) is entry:
            with contextlib.suppress(PoolBusyError):
                await self.unload(entry.key)

    async def _acquire(self, request: LeaseRequest) -> tuple[PoolEntry, ModelInfo, bool]:
        entry = self._entries.get(request.spec.key)
        if request.base is None or (entry is not None and entry.loaded):
            return await self._acquire_one(request)
        # An adapter loads onto its base: hold the base while the adapter loads.
        async with self.lease(request.base):
            return await self._acquire_one(request)

    async def _acquire_one(self, request: LeaseRequest) -> tuple[PoolEntry, ModelInfo, bool]:
        key = request.spec.key
        deadline = time.monotonic() + self.limits.queue_timeout
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry.stale:
                # Old weights finish their requests; new requests wait for the reload.
                await self._drop_stale()
                if key in self._entries:
                    await self._wait_for_room(deadline)
                continue
            if entry is not None and entry.info is not None:
                entry.in_flight += 1
                entry.last_used = time.monotonic()
                self._tell(key, "serving", entry.in_flight)
                return entry, entry.info, False
            if entry is not None and entry.load_task is not None:
                # Someone else is loading it: wait for that one load, then take a lease.
                await asyncio.shield(entry.load_task)
                continue
            victims = self._victims(request.estimated_bytes)
            if victims is not None:
                entry = await self._load(request, victims)
                return entry, entry.info or _never(), True
            await self._wait_for_room(deadline)

    def _victims(self, incoming_bytes: int) -> list[str] | None:
        limits = self.limits
        incoming_bytes += limits.entry_overhead
        if limits.max_bytes is not None and incoming_bytes > limits.max_bytes:
            raise ModelTooLargeError(
                f"The model needs about {incoming_bytes / 1e9:.2f} GB, more than the pool's "
                f"whole memory budget of {limits.max_bytes / 1e9:.2f} GB"
            )
        return choose_victims(
            self._residents(),
            incoming_bytes=incoming_bytes,
            max_models=limits.max_models,
            max_bytes=limits.max_bytes,
        )

    def _busy(self, entry: PoolEntry) -> bool:
        """In use: serving, loading, or the base of an adapter that is serving or loading."""
        if entry.in_flight > 0 or not entry.loaded:
            return True
        return any(d.in_flight > 0 or not d.loaded for d in self._dependents(entry.key))

    def _dependents(self, key: str) -> list[PoolEntry]:
        return [e for e in self._entries.values() if e.base_key == key]

    def _residents(self) -> list[Resident]:
        residents = []
        for e in self._entries.values():
            # Evicting a base takes its adapters with it: they count as one resident.
            group = [e, *self._dependents(e.key)]
            residents.append(
                Resident(
                    key=e.key,
                    nbytes=sum(m.nbytes for m in group) + self.limits.entry_overhead * len(group),
                    last_used=max(m.last_used for m in group),
                    in_use=self._busy(e),
                    pinned=any(m.pinned for m in group),
                )
            )
        return residents

    async def _wait_for_room(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self._waiting >= self.limits.max_queue:
            raise PoolBusyError(
                "Every loaded model is busy and the pool is full; retry shortly",
                retry_after=max(1, round(self.limits.queue_timeout / 10)),
            )
        self._waiting += 1
        try:
            async with self._room:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), remaining)
        finally:
            self._waiting -= 1

    async def _load(self, request: LeaseRequest, victims: list[str]) -> PoolEntry:
        key = request.spec.key
        loop = asyncio.get_running_loop()
        load_task: asyncio.Future[ModelInfo] = loop.create_future()
        entry = PoolEntry(
            key=key,
            spec=request.spec,
            nbytes=request.estimated_bytes,
            pinned=request.pinned,
            ttl=request.ttl,
            load_task=load_task,
        )
        # The entry is registered before any await, so concurrent requests find it and wait.
        self._entries[key] = entry
        self._tell(key, "loading", 0)
        try:
            for victim in victims:
                if victim not in self._entries:  # went with its base already
                    continue
                self.evictions += 1
                log.info("evicting %s to make room for %s", victim, key, extra={"model": victim})
                await self._unload_with_dependents(victim, "evicted")
            info = await self._loader.load(request.spec)
        except BaseException as exc:
            self._entries.pop(key, None)
            self._tell(key, "failed", 0)
            load_task.set_exception(exc)
            load_task.exception()  # waiters re-raise it; mark it retrieved here
            await self._notify()
            raise
        self.loads += 1
        entry.info = info
        # Measured bytes replace the estimate when MLX reports them.
        entry.nbytes = info.nbytes or entry.nbytes
        entry.in_flight += 1
        self._tell(key, "loaded", 0)
        self._tell(key, "serving", entry.in_flight)
        load_task.set_result(info)
        entry.load_task = None
        return entry

    async def _unload_with_dependents(self, key: str, state: str = "unloaded") -> None:
        for dependent in self._dependents(key):
            self._entries.pop(dependent.key, None)
            await self._loader.unload(dependent.key)
            self._tell(dependent.key, state, 0)
        self._entries.pop(key, None)
        await self._loader.unload(key)
        self._tell(key, state, 0)

    # ---- control -----------------------------------------------------------------------------

    async def preload(self, request: LeaseRequest) -> ModelInfo:
        """Load without keeping a lease (admin load, `preload:` entries)."""
        async with self.lease(request) as lease:
            return lease.info

    async def unload(self, key: str) -> bool:
        """Unload an idle entry (and adapters on it) now. False if it is not loaded;
        EntryBusyError if it or an adapter on it is serving."""
        entry = self._entries.get(key)
        if entry is None or not entry.loaded:
            return False
        if self._busy(entry):
            raise EntryBusyError(f"`{key}` is serving requests; try again when they finish")
        await self._unload_with_dependents(key)
        await self._notify()
        return True

    def unpin(self, key: str) -> None:
        """A pinned entry gets its lifetime back: its ttl, else the pool's idle_ttl (pinning
        is `keep_alive` forever, `_apply_keep_alive`)."""
        entry = self._entries.get(key)
        if entry is not None and entry.pinned:
            entry.pinned = False
            entry.last_used = time.monotonic()  # its idle time counts from now
            # Listeners (the dashboard) learn of it as of any change to an entry's lifetime.
            self._tell(key, "serving" if entry.in_flight else "idle", entry.in_flight)

    async def invalidate(self, keys: set[str]) -> None:
        """These entries' files changed or they left the registry: unload each once idle
        (adapters on a base go with it), and load afresh on next use."""
        for entry in list(self._entries.values()):
            if entry.key in keys or entry.base_key in keys:
                entry.stale = True
        await self._drop_stale()

    async def _drop_stale(self) -> None:
        for entry in list(self._entries.values()):
            if (
                entry.stale
                and entry.loaded
                and entry.key in self._entries
                and not self._busy(entry)
            ):
                log.info(
                    "unloading %s: its files changed or it was removed",
                    entry.key,
                    extra={"model": entry.key},
                )
                await self._unload_with_dependents(entry.key)
                await self._notify()

    async def apply_limits(self, limits: PoolLimits) -> None:
        """New limits from a config edit: evict idle entries now over them (busy ones go
        when their last request ends)."""
        self.limits = limits
        await self._enforce_limits()

    async def _enforce_limits(self) -> None:
        limits = self.limits
        for key in over_limits(
            self._residents(), max_models=limits.max_models, max_bytes=limits.max_bytes
        ):
            if key in self._entries:
                with contextlib.suppress(EntryBusyError):
                    self.evictions += 1
                    await self.unload(key)

    async def expire_idle(self, now: float | None = None) -> list[str]:
        """Unload idle entries past their ttl (entry ttl, else the pool's idle_ttl)."""
        now = time.monotonic() if now is None else now
        expired = []
        for entry in list(self._entries.values()):
            remaining = self.expires_in(entry, now)
            if remaining == 0 and entry.key in self._entries and not self._busy(entry):
                expired.append(entry.key)
                await self.unload(entry.key)
        return expired

    async def close(self) -> None:
        for key in [k for k, e in self._entries.items() if e.loaded and e.base_key is not None]:
            self._entries.pop(key, None)
            await self._loader.unload(key)
            self._tell(key, "unloaded", 0)
        for key in [k for k, e in self._entries.items() if e.loaded]:
            self._entries.pop(key, None)
            await self._loader.unload(key)
            self._tell(key, "unloaded", 0)

    def _tell(self, key: str, state: str, in_flight: int) -> None:
        if self.listener is not None:
            self.listener(key, state, in_flight)

    async def _notify(self) -> None:
        async with self._room:
            self._room.notify_all()


def _never() -> ModelInfo:
    raise AssertionError("a freshly loaded entry always has its info")
