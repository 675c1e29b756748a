"""What to watch for registry changes, and the thin loop that watches it.

`watch_roots` (which folders to hand to watchfiles) and `is_relevant` (which events matter)
are pure functions over a `WatchSet`; `watch_changes` runs watchfiles' `awatch` over the roots
and calls back once per settled burst of events. Rebuilding is the caller's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger(__name__)

# watchfiles yields once events have been quiet for STEP ms, or after DEBOUNCE ms of a
# continuing burst (a slow copy): an editor's save-by-rename lands in one batch.
STEP_MS = 300
DEBOUNCE_MS = 2000
# How often to look again when none of the watched places exists yet.
RETRY_S = 2.0

_IGNORED_NAMES = {".DS_Store", "__pycache__", ".git", ".locks"}
_IGNORED_SUFFIXES = (".swp", ".swx", "~", ".tmp", ".incomplete", ".lock", ".pyc")


@dataclass(frozen=True, slots=True)
class WatchSet:
    """The places whose changes can change the registry."""

    config_file: Path | None
    model_dirs: tuple[Path, ...]
    hf_cache: Path | None

    def sources(self) -> tuple[Path, ...]:
        return (*self.model_dirs, *([self.hf_cache] if self.hf_cache else []))


def _nearest_existing(path: Path) -> Path | None:
    """A folder that does not exist yet is watched through its nearest existing parent, so
    creating it is noticed."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return None


def watch_roots(watch: WatchSet) -> list[Path]:
    """Existing folders to watch (recursively), without duplicates or nested repeats."""
    wanted = list(watch.sources())
    if watch.config_file is not None:
        # The folder, not the file: editors replace the file by renaming a new one onto it.
        wanted.append(watch.config_file.parent)
    roots: list[Path] = []
    for path in wanted:
        root = _nearest_existing(path)
        if root is not None and root not in roots:
            roots.append(root)
    # A root inside another root adds nothing.
    return sorted(r for r in roots if not any(o != r and o in r.parents for o in roots))


def _ignored(parts: tuple[str, ...]) -> bool:
    for part in parts:
        if part in _IGNORED_NAMES or part.startswith(".") or part.endswith(_IGNORED_SUFFIXES):
            return True
    return False


def is_relevant(watch: WatchSet, change: Change, path: str) -> bool:
    """Whether one filesystem event can change the registry. Pure; `change` is unused but
    part of watchfiles' filter signature."""
    del change
    target = Path(path)
    if watch.config_file is not None and target == watch.config_file:
        return True
    for source in watch.sources():
        if target == source or source in target.parents:
            # Hidden entries are staging (.partial conversions, .locks, editor temp files).
            return not _ignored(target.relative_to(source).parts)
        if target in source.parents:
            return True  # a parent of a source: the source itself may have appeared or gone
    return False


async def watch_changes(
    watch: WatchSet, on_change: Callable[[], None], stop: asyncio.Event
) -> None:
    """Call `on_change()` after each settled burst of relevant events until `stop` is set.
    Runs on the event loop; watchfiles does the waiting in its own thread."""
    while not stop.is_set():
        roots = watch_roots(watch)
        if not roots:
            try:
                await asyncio.wait_for(stop.wait(), RETRY_S)
            except TimeoutError:
                continue
            return
        log.debug("watching %s", ", ".join(map(str, roots)))

        def relevant(change: Change, path: str) -> bool:
            return is_relevant(watch, change, path)

        async for _ in awatch(
            *roots, watch_filter=relevant, step=STEP_MS, debounce=DEBOUNCE_MS, stop_event=stop
        ):
            on_change()
            # A source that did not exist may exist now: restart on the better roots.
            if watch_roots(watch) != roots:
                break
