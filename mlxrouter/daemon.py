"""The daemon's domain core: the current registry snapshot, the pool and the engine, and the
one place that turns a request's `model`/`adapters` fields into something to lease.

The API layer talks to `Daemon` only; it never imports mlx. `Daemon` knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from .config import Config, load_config, parse_bytes, parse_duration
from .engine import Engine, GenerationRequest, GenerationStream, LoadSpec
from .errors import ConfigError, InvalidRequestError, ModelNotFoundError, ShuttingDownError
from .metrics import Metrics
from .pool import Lease, LeaseRequest, Pool, PoolLimits
from .registry import Registry, RegistryDiff, RegistryEntry, build_registry, diff_registries
from .watcher import WatchSet, watch_changes

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
        entry_overhead=parse_bytes(pool.prompt_cache_bytes),
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

    def lease_request(self, keep_alive: float | None = None) -> LeaseRequest:
        model = self.model
        base = LeaseRequest(
            spec=LoadSpec(
                key=model.id,
                model_path=model.path,
                trust_remote_code=model.options.trust_remote_code,
            ),
            estimated_bytes=model.found.size_bytes,
            pinned=model.options.pinned,
            ttl=model.options.ttl,
            keep_alive=None if self.adapter else keep_alive,
        )
        adapter = self.adapter
        if adapter is None:
            return base
        # The adapter shares the base's arrays, so it costs about its own file size.
        return LeaseRequest(
            spec=LoadSpec(
                key=adapter.id,
                model_path=model.path,
                adapter_path=adapter.path,
                trust_remote_code=model.options.trust_remote_code,
                base_key=model.id,
            ),
            estimated_bytes=adapter.found.size_bytes,
            pinned=adapter.options.pinned,
            ttl=adapter.options.ttl,
            base=base,
            keep_alive=keep_alive,
        )


class Daemon:
    """Owns the engine thread, the pool and the current registry. Event-loop side.

    With `watch=True`, the config file's folder, the model folders and the HF cache are
    watched; each settled burst of changes rebuilds the registry off the event loop and swaps
    it in whole. `config_path` need not exist: a file created later is read, and deleting it
    goes back to the defaults (plus `overrides`). A config that does not parse keeps the last
    good one and marks `/health` degraded."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        registry: Registry | None = None,
        watch: bool = True,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        #: fields the command line set (--host, --port, the demo's default_model): kept on reload
        self.overrides = dict(overrides or {})
        self.config = config
        # The folder resolved, the name kept: watchfiles reports real paths (macOS's /var is a
        # link) and absolute ones, and a relative --config must still match them.
        self.config_path = (
            config_path.expanduser().parent.resolve() / config_path.name
            if config_path is not None
            else None
        )
        #: whether the file was there at the last look, to log its appearing and going once
        self._config_present = self.config_path is not None and self.config_path.exists()
        self.registry = registry if registry is not None else build_registry(config)
        self.engine = Engine(prompt_cache_bytes=parse_bytes(config.pool.prompt_cache_bytes))
        self.pool = Pool(self.engine, pool_limits(config))
        self.metrics = Metrics(self.pool)
        self.config_error: str | None = None
        self.draining = False
        self.rebuilds = 0
        #: the encoded /v1/models answer with the (snapshot, loaded ids) it was built for
        self.models_answer: tuple[Registry, frozenset[str], bytes] | None = None
        self._watch = watch
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_stop = asyncio.Event()
        self._restart_watch = asyncio.Event()
        self._reload_pending = False
        self._reloader: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._reap_idle(), name="pool-reaper"))
        if self._watch and self.config_path is not None:
            # Watch the config's own folder even before the file exists; a missing folder
            # would otherwise be watched through a far larger parent (the home folder).
            try:
                self.config_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create the config folder %s: %s", self.config_path.parent, exc)
        if self._watch:
            self._tasks.append(asyncio.create_task(self._watch_sources(), name="watcher"))
        for entry in self.registry:
            if entry.options.preload:
                target = self.target(entry.id, None)
                try:
                    await self.pool.preload(target.lease_request())
                except Exception as exc:  # noqa: BLE001 - a bad preload must not stop the daemon
                    log.warning("preloading %s failed: %s", entry.id, exc)

    async def stop(self) -> None:
        self._watch_stop.set()
        for task in [*self._tasks, *([self._reloader] if self._reloader else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close()
        await asyncio.to_thread(self.engine.close)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.pool.expire_idle()

    # ---- watching and reloading -------------------------------------------------------------

    def watch_set(self) -> WatchSet:
        return WatchSet(
            config_file=self.config_path,
            model_dirs=tuple(self.config.model_dir_paths()),
            hf_cache=self.config.hf_cache_dir(),
        )

    async def _watch_sources(self) -> None:
        restarted = False
        while not self._watch_stop.is_set():
            watching = self.watch_set()
            stop = asyncio.Event()
            self._restart_watch = stop
            waiter = asyncio.create_task(self._watch_stop.wait())
            watcher = asyncio.create_task(watch_changes(watching, self.request_reload, stop))
            if restarted:
                # Changes made while no watcher ran went unseen: look once more. The reload
                # runs after the new watcher's first step, which starts watching.
                self.request_reload()
            restarted = True
            await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            waiter.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def request_reload(self) -> None:
        """Coalesce: a change that arrives during a rebuild causes one more rebuild."""
        self._reload_pending = True
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._reload_until_clean(), name="reload")

    async def _reload_until_clean(self) -> None:
        while self._reload_pending:
            self._reload_pending = False
            try:
                await self.reload()
            except Exception:
                log.exception("registry rebuild failed; keeping the last good registry")

    async def reload(self) -> RegistryDiff:
        """Re-read the config (if any), rebuild the registry off the event loop and swap it in.
        No file means the defaults; a bad config keeps the last good one; requests in flight
        finish on what they leased."""
        config = self.config
        if self.config_path is not None:
            try:
                loaded = await asyncio.to_thread(_read_config, self.config_path)
            except ConfigError as exc:
                self._config_present = True
                # Name the file, not its folder: /health is readable without a key.
                self.config_error = exc.message.replace(
                    str(self.config_path), self.config_path.name
                )
                log.error("config not applied, keeping the last good one: %s", exc.message)
            else:
                self._note_config_presence(present=loaded is not None)
                config = msgspec.structs.replace(loaded or Config(), **self.overrides)
                self.config_error = None
        registry = await asyncio.to_thread(build_registry, config)
        diff = diff_registries(self.registry, registry)
        old_watch = self.watch_set()
        self.registry, self.config = registry, config  # the swap: one assignment each
        self.rebuilds += 1
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
        if self.watch_set() != old_watch:
            self._restart_watch.set()
        return diff

    def _note_config_presence(self, *, present: bool) -> None:
        if present and not self._config_present:
            log.info("config file %s appeared: applying it", self.config_path)
        elif not present and self._config_present:
            log.warning(
                "config file %s is gone: back to the built-in defaults "
                "(plus the command line's settings)",
                self.config_path,
            )
        self._config_present = present

    def busy(self) -> bool:
        """Requests in flight, waiting for room, or a load under way (the drain waits)."""
        entries = self.pool.entries()
        return self.pool.queue_depth > 0 or any(e.in_flight or not e.loaded for e in entries)

    def health(self) -> tuple[bool, list[str]]:
        reasons = [f"config error: {self.config_error}"] if self.config_error else []
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

    def default_temperature(self, target: Target) -> float:
        """The temperature for a request that names none: the `models:` entry's (the id asked
        for, then the adapter's, then the model's), else `default_temperature`, else OpenAI's
        1.0."""
        names = [target.requested, target.model.id]
        if target.adapter is not None:
            names.insert(1, target.adapter.id)
        for name in names:
            entry = self.config.models.get(name)
            if entry is not None and entry.temperature is not None:
                return entry.temperature
        default = self.config.default_temperature
        return 1.0 if default is None else default

    @asynccontextmanager
    async def lease(
        self, target: Target, *, keep_alive: float | None = None
    ) -> AsyncIterator[Lease]:
        if self.draining:
            raise ShuttingDownError("The server is shutting down")
        async with self.pool.lease(target.lease_request(keep_alive)) as lease:
            yield lease

    # ---- admin -------------------------------------------------------------------------------

    async def load(self, model: str, adapter: str | None = None) -> Target:
        """Load an entry now (admin); it stays until evicted or expired."""
        target = self.target(model, adapter)
        await self.pool.preload(target.lease_request())
        return target

    async def unload(self, model: str, adapter: str | None = None) -> bool:
        target = self.target(model, adapter)
        return await self.pool.unload(target.key)

    def pool_status(self) -> dict[str, Any]:
        """What is loaded, for `GET /admin/pool` and `mlxrouter ps`. No filesystem paths."""
        now_mono, now_wall = time.monotonic(), time.time()
        entries = []
        for entry in self.pool.entries():
            expires = self.pool.expires_in(entry, now_mono)
            entries.append(
                {
                    "id": entry.key,
                    "kind": "adapter" if entry.base_key else "model",
                    "base": entry.base_key,
                    "state": "loaded" if entry.loaded else "loading",
                    "bytes": entry.nbytes,
                    "in_flight": entry.in_flight,
                    "last_used": round(now_wall - (now_mono - entry.last_used), 3),
                    "pinned": entry.pinned,
                    "expires_at": None if expires is None else round(now_wall + expires, 3),
                    "load_seconds": entry.info.load_seconds if entry.info else None,
                }
            )
        limits = self.pool.limits
        return {
            "entries": entries,
            "used_bytes": self.pool.used_bytes,
            "max_models": limits.max_models,
            "max_bytes": limits.max_bytes,
            "idle_ttl": limits.idle_ttl,
            "queue_depth": self.pool.queue_depth,
            "loads": self.pool.loads,
            "evictions": self.pool.evictions,
        }

    async def generate(self, lease: Lease, request: GenerationRequest) -> GenerationStream:
        return await self.engine.generate(lease.key, request)


def _read_config(path: Path) -> Config | None:
    """The file's config, or None when there is none (not created yet, or deleted)."""
    if not path.exists():
        return None
    return load_config(path)


def _only_model(registry: Registry) -> str | None:
    models = [e.id for e in registry if e.kind == "model"]
    return models[0] if len(models) == 1 else None
