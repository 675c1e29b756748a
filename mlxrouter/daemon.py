"""The daemon's domain core: the current registry snapshot, the pool and the engine, and the
one place that turns a request's `model`/`adapters` fields into something to lease.

The API layer talks to `Daemon` only; it never imports mlx. `Daemon` knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .config import Config, parse_bytes, parse_duration
from .engine import Engine, GenerationRequest, GenerationStream, LoadSpec
from .errors import InvalidRequestError, ModelNotFoundError, ShuttingDownError
from .pool import Lease, LeaseRequest, Pool, PoolLimits
from .registry import Registry, RegistryEntry, build_registry

log = logging.getLogger(__name__)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def pool_limits(config: Config) -> PoolLimits:
    pool = config.pool
    max_bytes = None
    if pool.max_memory is not None:
        max_bytes = parse_bytes(pool.max_memory, total_memory=physical_memory())
    return PoolLimits(
        max_models=pool.max_models,
        max_bytes=max_bytes,
        idle_ttl=parse_duration(pool.idle_ttl),
        queue_timeout=pool.queue_timeout,
        max_queue=pool.max_queue,
    )


@dataclass(frozen=True, slots=True)
class Target:
    """What a request resolved to: the name it used, the model entry, and maybe an adapter."""

    requested: str
    model: RegistryEntry
    adapter: RegistryEntry | None

    @property
    def key(self) -> str:
        return self.adapter.id if self.adapter else self.model.id

    def lease_request(self) -> LeaseRequest:
        adapter = self.adapter
        options = (adapter or self.model).options
        return LeaseRequest(
            spec=LoadSpec(
                key=self.key,
                model_path=self.model.path,
                adapter_path=adapter.path if adapter else None,
                trust_remote_code=self.model.options.trust_remote_code,
            ),
            estimated_bytes=self.model.found.size_bytes
            + (adapter.found.size_bytes if adapter else 0),
            pinned=options.pinned,
            ttl=options.ttl,
        )


class Daemon:
    """Owns the engine thread, the pool and the current registry. Event-loop side."""

    def __init__(self, config: Config, *, registry: Registry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else build_registry(config)
        self.engine = Engine()
        self.pool = Pool(self.engine, pool_limits(config))
        self.problems: list[str] = []
        self.draining = False
        self._reaper: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="pool-reaper")
        for entry in self.registry:
            if entry.options.preload:
                target = self.target(entry.id, None)
                try:
                    await self.pool.preload(target.lease_request())
                except Exception as exc:  # noqa: BLE001 - a bad preload must not stop the daemon
                    log.warning("preloading %s failed: %s", entry.id, exc)

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await self.pool.close()
        await asyncio.to_thread(self.engine.close)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.pool.expire_idle()

    def health(self) -> tuple[bool, list[str]]:
        reasons = list(self.problems)
        if not self.engine.healthy:
            reasons.append("the generation engine has stopped")
        if self.draining:
            reasons.append("shutting down")
        return not reasons, reasons

    # ---- requests ----------------------------------------------------------------------------

    def target(self, model: str | None, adapter: str | None) -> Target:
        """Resolve a request's `model` (and `adapters`) against the registry snapshot."""
        registry = self.registry
        name = model or self.config.default_model or _only_model(registry)
        if name is None:
            raise InvalidRequestError(
                "No `model` given and no `default_model` configured", param="model"
            )
        entry = registry.resolve(name)
        adapter_entry = None
        if entry.kind == "adapter":
            adapter_entry, entry = entry, registry.resolve(entry.base or "")
        if adapter is not None:
            try:
                named = registry.resolve(adapter)
            except ModelNotFoundError:
                raise ModelNotFoundError(
                    f"The adapter `{adapter}` does not exist", param="adapters"
                ) from None
            if named.kind != "adapter" or named.base != entry.id:
                raise InvalidRequestError(
                    f"`{adapter}` is not an adapter of `{entry.id}`", param="adapters"
                )
            adapter_entry = named
        return Target(requested=name, model=entry, adapter=adapter_entry)

    @asynccontextmanager
    async def lease(self, target: Target) -> AsyncIterator[Lease]:
        if self.draining:
            raise ShuttingDownError("The server is shutting down")
        async with self.pool.lease(target.lease_request()) as lease:
            yield lease

    async def generate(self, lease: Lease, request: GenerationRequest) -> GenerationStream:
        return await self.engine.generate(lease.key, request)


def _only_model(registry: Registry) -> str | None:
    models = [e.id for e in registry if e.kind == "model"]
    return models[0] if len(models) == 1 else None
