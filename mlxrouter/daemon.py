"""The daemon: the one facade the API and the server talk to.

`Daemon` owns the current config and registry snapshot, the pool, the engine thread and the
reloader, and answers in typed values (`status.py`): `model_cards()`, `pool_status()`,
`health()`; requests go through `target()`, `lease()` and `generate()`. It knows nothing about
HTTP, and importing it does not import mlx (the engine is built when a daemon is).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .activity import Activity, LogFeed
from .config import Config, DistributedConfig, ModelSettings
from .distributed import Groups, RoutedLoader
from .engine import EmbeddingRequest, GenerationRequest, GenerationStream
from .errors import InvalidRequestError, MlxRouterError, ShuttingDownError
from .metrics import Metrics
from .paths import default_paths
from .pool import Lease, Pool, PoolLimits
from .registry import Registry, RegistryDiff, build_registry, diff_registries, with_remote
from .reloader import Reloader
from .status import (
    Health,
    ModelCard,
    ModelDetail,
    PoolEntryStatus,
    PoolStatus,
    WorkerGroupStatus,
    health,
    model_card,
    model_cards,
    seconds_or_none,
    shown_settings,
)
from .targets import (
    ModelLease,
    Target,
    check_loadable,
    draft_lease,
    draft_target,
    model_options,
    resolve,
)
from .upstreams import RemoteLease, Upstreams

if TYPE_CHECKING:
    from .engine import Engine
    from .remote import RemoteStream

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


#: bytes: the default disk budget's cap (below it, 10% of the free disk)
DISK_CACHE_CAP_BYTES = 20 * 10**9


def disk_cache_budget(config: Config) -> int:
    """`pool.disk_cache_bytes`, or its default: 10% of the cache folder's free disk, at
    most 20GB."""
    if config.pool.disk_cache_bytes is not None:
        return int(config.pool.disk_cache_bytes)
    folder = default_paths().cache_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return 0
    return min(free // 10, DISK_CACHE_CAP_BYTES)


def distributed_entries(registry: Registry) -> dict[str, DistributedConfig]:
    return {e.id: e.options.distributed for e in registry if e.options.distributed is not None}


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
        from .engine.disk_cache import DiskCache

        self.config = config
        #: the local snapshot (config, folders, HF cache); `registry` adds the upstreams' ids
        self.local_registry = registry if registry is not None else build_registry(config)
        self.registry = self.local_registry
        self.engine: Engine = Engine(
            prompt_cache_bytes=config.pool.prompt_cache_bytes,
            mlx_cache_bytes=config.pool.mlx_cache_bytes,
            disk_cache=DiskCache(default_paths().prompt_cache_dir, disk_cache_budget(config)),
        )
        #: the worker groups of `distributed:` entries; the pool loads them like models
        self.groups = Groups()
        self.groups.configure(distributed_entries(self.local_registry))
        self.pool = Pool(RoutedLoader(self.engine, self.groups), pool_limits(config))
        #: the dashboard's ring of requests and live feed (pool changes, requests, log lines)
        self.activity = Activity(config.ui_config.history)
        self.pool.listener = self.activity.pool_changed
        self._log_feed: LogFeed | None = None
        self.metrics = Metrics(self.pool, self.engine.memory, self.engine.prompt_cache_figures)
        self.upstreams = Upstreams(self._upstreams_changed, self.metrics.upstreams)
        self.reloader = Reloader(config_path, overrides or {}, lambda: self.config, self.apply)
        self.draining = False
        self._watch = watch
        self._reaper: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._log_feed = LogFeed(self.activity, asyncio.get_running_loop())
        logging.getLogger("mlxrouter").addHandler(self._log_feed)
        self._reaper = asyncio.create_task(self._reap_idle(), name="pool-reaper")
        if self._watch:
            self.reloader.start_watching()
        await self.upstreams.start(self.config.upstreams)  # their ids are listed from the start
        for entry in self.registry:
            if entry.options.preload:
                try:
                    await self.pool.preload(self.target(entry.id, None).lease_request())
                except Exception as exc:  # noqa: BLE001 - a bad preload must not stop the daemon
                    log.warning("preloading %s failed: %s", entry.id, exc)

    async def stop(self) -> None:
        self.activity.close()
        if self._log_feed is not None:
            logging.getLogger("mlxrouter").removeHandler(self._log_feed)
        await self.reloader.stop()
        await self.upstreams.stop()
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await self.pool.close()
        await self.groups.close()  # a group still starting is not in the pool's loaded set
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
        old = self.registry
        self.local_registry, self.config = registry, config
        self.groups.configure(distributed_entries(registry))
        self.activity.resize(config.ui_config.history)
        await self.upstreams.apply(config.upstreams)
        self.registry = with_remote(registry, self.upstreams.entries())
        diff = diff_registries(old, self.registry)
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
        disk = self.engine.disk_cache
        if disk is not None and disk_cache_budget(config) != disk.budget:
            await self.engine.set_disk_cache_bytes(disk_cache_budget(config))
        return diff

    def _upstreams_changed(self) -> None:
        """An upstream's model list or up/down state changed: swap a snapshot with it in.
        Local entries are untouched (local ids win), so the pool has nothing to drop."""
        self.registry = with_remote(self.local_registry, self.upstreams.entries())

    # ---- what the daemon says about itself ---------------------------------------------------

    def loaded_ids(self) -> frozenset[str]:
        return frozenset(e.key for e in self.pool.entries() if e.loaded)

    def model_cards(self) -> list[ModelCard]:
        """Every id and alias of the current snapshot, sorted."""
        return model_cards(self.registry, self.loaded_ids(), self._context_cap)

    def _context_cap(self, name: str) -> int | None:
        """An id's `context_length` setting (a cap below the model's own)."""
        try:
            return self.settings(self.target(name, None)).context_length
        except MlxRouterError:  # an id the snapshot lists but cannot resolve: no cap
            return None

    def model_detail(self, name: str) -> ModelDetail:
        """One id's card and the request defaults in effect for it."""
        registry = self.registry
        settings = self.settings(self.target(name, None))
        card = model_card(
            registry, name, registry.resolve(name), self.loaded_ids(), settings.context_length
        )
        return ModelDetail(**msgspec.structs.asdict(card), settings=shown_settings(settings))

    def health(self) -> Health:
        reasons = [f"config error: {self.reloader.error}"] if self.reloader.error else []
        if not self.engine.healthy:
            reasons.append("the generation engine has stopped")
        if self.draining:
            reasons.append("shutting down")
        reasons += self.upstreams.reasons()
        reasons += self.groups.reasons()
        loaded = [e.key for e in self.pool.entries() if e.loaded]
        return health(reasons, len(self.registry), loaded)

    def busy(self) -> bool:
        """Requests in flight, waiting for room, or a load under way (the drain waits)."""
        entries = self.pool.entries()
        if self.pool.queue_depth > 0 or self.upstreams.in_flight > 0:
            return True
        return any(e.in_flight or not e.loaded for e in entries)

    def _entry_type(self, key: str) -> Literal["chat", "embedding", "vision"]:
        entry = self.registry.entries.get(key)
        return entry.found.model_type if entry is not None else "chat"

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
                    type=self._entry_type(entry.key),
                    base=entry.base_key,
                    state="loaded" if entry.loaded else "loading",
                    bytes=entry.nbytes,
                    in_flight=entry.in_flight,
                    last_used=round(now_wall - (now_mono - entry.last_used), 3),
                    pinned=entry.pinned,
                    expires_at=None if expires is None else round(now_wall + expires, 3),
                    load_seconds=entry.info.load_seconds if entry.info else None,
                    worker=self._worker_status(entry.key),
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
            machine_memory_bytes=physical_memory(),
        )

    def _worker_status(self, key: str) -> WorkerGroupStatus | None:
        group = self.groups.group(key)
        if group is None:
            return None
        return WorkerGroupStatus(
            state=group.state,
            reason=group.reason or None,
            pid=group.pid,
            port=group.port or None,
            restarts=group.restarts,
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
        self,
        target: Target,
        *,
        keep_alive: float | None = None,
        request: GenerationRequest | None = None,
    ) -> AsyncIterator[Lease]:
        """Hold `target` loaded for the block (loading it, evicting idle entries if needed),
        and its draft model if its settings or `request` name one (`targets.draft_target`)."""
        if self.draining:
            raise ShuttingDownError("The server is shutting down")
        remote = target.model.remote
        if remote is not None:  # its upstream loads it; the pool does not count it
            async with self.upstreams.hold(remote):
                yield RemoteLease.of(target.model, remote)
            return
        check_loadable(target)
        folder = self.config_path.parent if self.config_path else None
        settings = self.settings(target)
        options = model_options(target, settings, folder, request)  # the engine's part
        draft = draft_target(self.registry, settings, request)
        async with (
            self.pool.lease(target.lease_request(keep_alive)) as lease,
            draft_lease(self.pool, draft) as draft_key,
        ):
            options = replace(options, draft=draft_key)
            yield ModelLease(lease.key, lease.info, lease.loaded_now, options)

    async def generate(
        self, lease: Lease, request: GenerationRequest | EmbeddingRequest
    ) -> GenerationStream | RemoteStream:
        if isinstance(request, EmbeddingRequest):
            if isinstance(lease, RemoteLease) or self.groups.handles(lease.key):
                raise InvalidRequestError(
                    f"`{lease.key}` is served elsewhere; only local models serve embeddings",
                    param="model",
                )
            return await self.engine.generate(lease.key, request)
        if isinstance(lease, RemoteLease):
            return self.upstreams.generate(lease.remote, request, context=lease.info.context_length)
        if self.groups.handles(lease.key):  # a worker group: forwarded to its rank 0
            wait = self.config.pool.queue_timeout
            return await self.groups.generate(lease.key, request, wait=wait)
        return await self.engine.generate(lease.key, ModelLease.apply(lease, request))

    async def count_tokens(self, lease: Lease, request: GenerationRequest) -> int:
        """The prompt tokens `request` would have on the leased model (its own template)."""
        if isinstance(lease, RemoteLease):
            raise InvalidRequestError(
                f"Counting tokens is not available for `{lease.key}`: the upstream "
                f"`{lease.remote.upstream}` serves it",
                param="model",
            )
        if self.groups.handles(lease.key):
            raise InvalidRequestError(
                f"Counting tokens is not available for `{lease.key}`, served across machines",
                param="model",
            )
        return await self.engine.count_tokens(lease.key, ModelLease.apply(lease, request))

    # ---- admin -------------------------------------------------------------------------------

    async def load(self, model: str, adapter: str | None = None, pin: bool | None = None) -> Target:
        """Load an entry now (admin); it stays until evicted or expired. `pin`: True keeps it
        until it is unloaded or unpinned (as `keep_alive: -1` does), False gives it back its
        lifetime (its `ttl`, else `pool.idle_ttl`); None leaves that as it is."""
        target = self.target(model, adapter)
        if target.model.remote is not None:
            raise InvalidRequestError(
                f"`{target.key}` is served by the upstream `{target.model.remote.upstream}`, "
                "which loads its models itself",
                param="model",
            )
        check_loadable(target)
        await self.pool.preload(target.lease_request(keep_alive=math.inf if pin else None))
        if pin is False:
            self.pool.unpin(target.key)
        return target

    async def unload(self, model: str, adapter: str | None = None) -> bool:
        return await self.pool.unload(self.target(model, adapter).key)
