"""Keeping the daemon in step with its files: the config file and the model folders.

`Reloader` watches (watchfiles, through `watcher.watch_changes`) the config file's folder, the
model folders and the HF cache; each settled burst of changes re-reads the config and rebuilds
the registry off the event loop, then hands both to the daemon's `apply`, which swaps them in.
A change that lands during a rebuild causes one more rebuild, never none. The config file need
not exist: a file created later is read, and deleting it goes back to the defaults (plus the
command line's overrides). A config that does not parse keeps the last good one and is
reported through `error`. Event-loop side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from .config import Config, load_config
from .errors import ConfigError
from .registry import Registry, RegistryDiff, build_registry
from .watcher import WatchSet, watch_changes

log = logging.getLogger("mlxrouter.daemon")

#: swaps a new config and registry in; returns what changed
Apply = Callable[[Config, Registry], Awaitable[RegistryDiff]]


class Reloader:
    def __init__(
        self,
        config_path: Path | None,
        overrides: Mapping[str, Any],
        current: Callable[[], Config],
        apply: Apply,
    ) -> None:
        # The folder resolved, the name kept: watchfiles reports real paths (macOS's /var is a
        # link) and absolute ones, and a relative --config must still match them.
        self.config_path = (
            config_path.expanduser().parent.resolve() / config_path.name
            if config_path is not None
            else None
        )
        #: fields the command line set (--host, --port, the demo's default_model): kept on reload
        self.overrides = dict(overrides)
        #: why the last config was not applied (file and line), or None
        self.error: str | None = None
        self.rebuilds = 0
        self._current = current
        self._apply = apply
        #: whether the file was there at the last look, to log its appearing and going once
        self._config_present = self.config_path is not None and self.config_path.exists()
        self._stop = asyncio.Event()
        self._restart_watch = asyncio.Event()
        self._pending = False
        self._rebuilding: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None

    def start_watching(self) -> None:
        if self.config_path is not None:
            # Watch the config's own folder even before the file exists; a missing folder
            # would otherwise be watched through a far larger parent (the home folder).
            try:
                self.config_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot create the config folder %s: %s", self.config_path.parent, exc)
        self._watching = asyncio.create_task(self._watch(), name="watcher")

    async def stop(self) -> None:
        self._stop.set()
        tasks = [t for t in (self._watching, self._rebuilding) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def watch_set(self) -> WatchSet:
        config = self._current()
        return WatchSet(
            config_file=self.config_path,
            model_dirs=tuple(config.model_dir_paths()),
            hf_cache=config.hf_cache_dir(),
        )

    async def _watch(self) -> None:
        restarted = False
        while not self._stop.is_set():
            watching = self.watch_set()
            restart = asyncio.Event()
            self._restart_watch = restart
            stopped = asyncio.create_task(self._stop.wait())
            watcher = asyncio.create_task(watch_changes(watching, self.request, restart))
            if restarted:
                # Changes made while no watcher ran went unseen: look once more. The reload
                # runs after the new watcher's first step, which starts watching.
                self.request()
            restarted = True
            await asyncio.wait({stopped, watcher}, return_when=asyncio.FIRST_COMPLETED)
            restart.set()
            stopped.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    def request(self) -> None:
        """Coalesce: a change that arrives during a rebuild causes one more rebuild."""
        self._pending = True
        if self._rebuilding is None or self._rebuilding.done():
            self._rebuilding = asyncio.create_task(self._rebuild_until_clean(), name="reload")

    async def _rebuild_until_clean(self) -> None:
        while self._pending:
            self._pending = False
            try:
                await self.reload()
            except Exception:
                log.exception("registry rebuild failed; keeping the last good registry")

    async def reload(self) -> RegistryDiff:
        """Re-read the config (if any), rebuild the registry off the event loop and apply both.
        No file means the defaults; a bad config keeps the last good one."""
        config = self._current()
        if self.config_path is not None:
            try:
                loaded = await asyncio.to_thread(_read_config, self.config_path)
            except ConfigError as exc:
                self._config_present = True
                # Name the file, not its folder: /health is readable without a key.
                self.error = exc.message.replace(str(self.config_path), self.config_path.name)
                log.error("config not applied, keeping the last good one: %s", exc.message)
            else:
                self._note_presence(present=loaded is not None)
                config = msgspec.structs.replace(loaded or Config(), **self.overrides)
                self.error = None
        registry = await asyncio.to_thread(build_registry, config)
        old_watch = self.watch_set()
        diff = await self._apply(config, registry)
        self.rebuilds += 1
        if self.watch_set() != old_watch:
            self._restart_watch.set()
        return diff

    def _note_presence(self, *, present: bool) -> None:
        if present and not self._config_present:
            log.info("config file %s appeared: applying it", self.config_path)
        elif not present and self._config_present:
            log.warning(
                "config file %s is gone: back to the built-in defaults "
                "(plus the command line's settings)",
                self.config_path,
            )
        self._config_present = present


def _read_config(path: Path) -> Config | None:
    """The file's config, or None when there is none (not created yet, or deleted)."""
    if not path.exists():
        return None
    return load_config(path)
