"""The daemon: the one facade the API and the server talk to.

`Daemon` owns the current config and registry snapshot, the pool, the engine thread and the
reloader, and answers in typed values (`status.py`): `model_cards()`, `pool_status()`,
`health()`; requests go through `target()`, `lease()` and `generate()`. It knows nothing about
HTTP, and importing it does not import mlx (the engine is built when a daemon is).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .config import Config, ModelSettings
from .engine import GenerationRequest, GenerationStream
from .errors import ShuttingDownError
from .metrics import Metrics
from .pool import Lease, Pool, PoolLimits
from .registry import Registry, RegistryDiff, build_registry, diff_registries
from .reloader import Reloader
from .status import (
    Health,
    ModelCard,
    ModelDetail,
    PoolEntryStatus,
    PoolStatus,
    health,
    model_card,
    model_cards,
    seconds_or_none,
)
from .targets import Target, resolve

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger(__name__)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def pool_limits(config: Config) -> PoolLimits:
    pool = config.pool
    return PoolLimits(
        max_models=pool.max_models,
        max_bytes=None if pool.max_memory is None else pool.max_memory.resolve(physical_memory()),
        idle_ttl=pool.idle_ttl,
        queue_timeout=pool.queue_timeout,
        max_queue=pool.max_queue,
        entry_overhead=pool.prompt_cache_bytes,
    )


class Daemon:
    """Event-loop side. With `watch=True` the config file's folder, the model folders and the
    HF cache are watched and changes applied live (`reloader.py`)."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        registry: Registry | None = None,
        watch: bool = True,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        from .engine import Engine  # mlx loads here, when a daemon is built, not on import

        self.config = config
        self.registry = registry if registry is not None else build_registry(config)
        self.engine: Engine = Engine(
            prompt_cache_bytes=config.pool.prompt_cache_bytes,
            mlx_cache_bytes=config.pool.mlx_cache_bytes,
        )
        self.pool = Pool(self.engine, pool_limits(config))
        self.metrics = Metrics(self.pool, self.engine.memory)
        self.reloader = Reloader(config_path, overrides or {}, lambda: self.config, self.apply)
        self.draining = False
        self._watch = watch
        self._reaper: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle(), name="pool-reaper")
        if self._watch:
            self.reloader.start_watching()
        for entry in self.registry:
            if entry.options.preload:
                try:
                    await self.pool.preload(self.target(entry.id, None).lease_request())
                except Exception as exc:  # noqa: BLE001 - a bad preload must not stop the daemon
                    log.warning("preloading %s failed: %s", entry.id, exc)

    async def stop(self) -> None:
        await self.reloader.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await self.pool.close()
        await asyncio.to_thread(self.engine.close)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.pool.expire_idle()

    # ---- live changes ------------------------------------------------------------------------

    @property
    def config_path(self) -> Path | None:
        return self.reloader.config_path

    @property
    def rebuilds(self) -> int:
        return self.reloader.rebuilds

    async def reload(self) -> RegistryDiff:
        """Re-read the config and rebuild the registry now (the watcher does this by itself)."""
        return await self.reloader.reload()

    async def apply(self, config: Config, registry: Registry) -> RegistryDiff:
        """Swap a new config and registry in (one assignment each): requests in flight finish
        on what they leased; entries whose files changed or went away unload once idle; the
        pool's limits, the engine's prompt-cache size and MLX's cache limit follow the config."""
        diff = diff_registries(self.registry, registry)
        self.registry, self.config = registry, config
        if diff:
            log.info(
                "registry rebuilt: +%d -%d ~%d",
                len(diff.added),
                len(diff.removed),
                len(diff.changed),
            )
        await self.pool.invalidate({*diff.removed, *diff.changed})
        limits = pool_limits(config)
        if limits != self.pool.limits:
            await self.pool.apply_limits(limits)
        if config.pool.prompt_cache_bytes != self.engine.prompt_cache_bytes:
            await self.engine.set_prompt_cache_bytes(config.pool.prompt_cache_bytes)
        if config.pool.mlx_cache_bytes != self.engine.mlx_memory.cache_bytes:
            await self.engine.set_mlx_cache_bytes(config.pool.mlx_cache_bytes)
        return diff

    # ---- what the daemon says about itself ---------------------------------------------------

    def loaded_ids(self) -> frozenset[str]:
        return frozenset(e.key for e in self.pool.entries() if e.loaded)

    def model_cards(self) -> list[ModelCard]:
        """Every id and alias of the current snapshot, sorted."""
        return model_cards(self.registry, self.loaded_ids())

    def model_detail(self, name: str) -> ModelDetail:
        """One id's card and the request defaults in effect for it."""
        registry = self.registry
        card = model_card(registry, name, registry.resolve(name), self.loaded_ids())
        settings = self.settings(self.target(name, None))
        return ModelDetail(**msgspec.structs.asdict(card), settings=settings)

    def health(self) -> Health:
        reasons = [f"config error: {self.reloader.error}"] if self.reloader.error else []
        if not self.engine.healthy:
            reasons.append("the generation engine has stopped")
        if self.draining:
            reasons.append("shutting down")
        loaded = [e.key for e in self.pool.entries() if e.loaded]
        return health(reasons, len(self.registry), loaded)

    def busy(self) -> bool:
        """Requests in flight, waiting for room, or a load under way (the drain waits)."""
        entries = self.pool.entries()
        return self.pool.queue_depth > 0 or any(e.in_flight or not e.loaded for e in entries)

    def pool_status(self) -> PoolStatus:
        """What is loaded, for `GET /admin/pool` and `mlxrouter ps`. No filesystem paths."""
        now_mono, now_wall = time.monotonic(), time.time()
        pool = self.pool
        entries = []
        for entry in pool.entries():
            expires = pool.expires_in(entry, now_mono)
            entries.append(
                PoolEntryStatus(
                    id=entry.key,
                    kind="adapter" if entry.base_key else "model",
                    base=entry.base_key,
                    state="loaded" if entry.loaded else "loading",
                    bytes=entry.nbytes,
                    in_flight=entry.in_flight,
                    last_used=round(now_wall - (now_mono - entry.last_used), 3),
                    pinned=entry.pinned,
                    expires_at=None if expires is None else round(now_wall + expires, 3),
                    load_seconds=entry.info.load_seconds if entry.info else None,
                )
            )
        limits = pool.limits
        mlx = self.engine.memory()
        return PoolStatus(
            entries=entries,
            used_bytes=pool.used_bytes,
            max_models=limits.max_models,
            max_bytes=limits.max_bytes,
            idle_ttl=seconds_or_none(limits.idle_ttl),
            queue_depth=pool.queue_depth,
            loads=pool.loads,
            evictions=pool.evictions,
            mlx_cache_limit=self.engine.mlx_memory.cache_bytes,
            mlx_active_bytes=mlx.active_bytes,
            mlx_cache_bytes=mlx.cache_bytes,
            mlx_peak_bytes=mlx.peak_bytes,
        )

    # ---- requests ----------------------------------------------------------------------------

    def target(self, model: str | None, adapter: str | None) -> Target:
        """Resolve a request's `model` (and `adapters`) against the current snapshot."""
        return resolve(self.registry, self.config, model, adapter)

    def settings(self, target: Target) -> ModelSettings:
        """The request defaults for `target` (`models:` entries, `defaults:`)."""
        return target.settings(self.config)

    @asynccontextmanager
    async def lease(
        self, target: Target, *, keep_alive: float | None = None
    ) -> AsyncIterator[Lease]:
        """Hold `target` loaded for the block (loading it, evicting idle entries if needed)."""
        if self.draining:
            raise ShuttingDownError("The server is shutting down")
        async with self.pool.lease(target.lease_request(keep_alive)) as lease:
            yield lease

    async def generate(self, lease: Lease, request: GenerationRequest) -> GenerationStream:
        return await self.engine.generate(lease.key, request)

    async def count_tokens(self, lease: Lease, request: GenerationRequest) -> int:
        """The prompt tokens `request` would have on the leased model (its own template)."""
        return await self.engine.count_tokens(lease.key, request)

    # ---- admin -------------------------------------------------------------------------------

    async def load(self, model: str, adapter: str | None = None) -> Target:
        """Load an entry now (admin); it stays until evicted or expired."""
        target = self.target(model, adapter)
        await self.pool.preload(target.lease_request())
        return target

    async def unload(self, model: str, adapter: str | None = None) -> bool:
        return await self.pool.unload(self.target(model, adapter).key)
