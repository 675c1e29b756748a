"""Prompt (KV) caches kept on disk, so a conversation's prefix survives its model's eviction,
unload and a daemon restart (`pool.disk_cache_bytes`).

A model's most recently used caches are written when it unloads (evicted, unloaded, the
daemon stopping) with mlx_lm's `save_prompt_cache`, one file per cached token sequence, in a
folder per model id and weight-file fingerprint, so a model whose weights changed never reuses
an old cache. Writes are atomic (a temporary file renamed into place); a file whose header or
length does not add up (torn, truncated) is ignored and removed. A request's prompt is matched
against the files' token lists (kept in memory, read from the files' headers at the first use)
and the longest shared prefix is loaded back. The folder stays within its byte budget: the
least recently used files go first.

Engine thread only: saving and loading make MLX arrays. A write blocks the engine for as long
as the file takes; one unload writes at most its model's in-memory prompt cache
(`pool.prompt_cache_bytes`), so the pause is bounded by that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

from .prefix import shared_length

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"

# The index keeps each file's entry in memory for the daemon's life (~0.6 KB plus 4 bytes a
# token), so the number of files is bounded too: a small model's caches are small files, and a
# byte budget of gigabytes alone would let the index grow by hundreds of MB.
MAX_FILES = 4096


@dataclass(slots=True)
class DiskEntry:
    """One cache file: which model (id, fingerprint), kind and tokens it covers. The index
    keeps one per file for the daemon's life, so its tokens are packed (4 bytes a token, not
    a tuple of int objects: ~9x less for a cache of many short prompts)."""

    path: Path
    model: str
    fingerprint: str
    kind: str
    tokens: array[int]
    nbytes: int
    used: float  # last write or read (the file's mtime), for LRU


def lru_victims(
    entries: list[tuple[str, int, float]], budget: int, max_files: int | None = None
) -> list[str]:
    """Which of `(name, nbytes, last used)` go, least recently used first, so the rest fit
    `budget` bytes and number at most `max_files` (pure)."""
    total, count = sum(nbytes for _, nbytes, _ in entries), len(entries)
    victims = []
    for name, nbytes, _ in sorted(entries, key=lambda e: e[2]):
        if total <= budget and (max_files is None or count <= max_files):
            break
        victims.append(name)
        total -= nbytes
        count -= 1
    return victims


def read_entry(path: Path) -> DiskEntry | None:
    """A cache file's entry from its safetensors header, without loading its arrays; None
    when the header is unreadable or the file's length does not match it (torn)."""
    try:
        with path.open("rb") as file:
            (size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(size))
        end = max(
            (t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0
        )
        stat = path.stat()
        if stat.st_size != 8 + size + end:
            return None
        # save_prompt_cache flattens [metadata, classes, scalars]: ours is under "0."
        meta = json.loads(header["__metadata__"]["0.mlxrouter"])
        return DiskEntry(
            path,
            str(meta["model"]),
            str(meta["fingerprint"]),
            str(meta["kind"]),
            array("i", (int(t) for t in meta["tokens"])),
            stat.st_size,
            stat.st_mtime,
        )
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _folder_name(model: str, fingerprint: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model)[:60]
    digest = hashlib.sha256(f"{model}\0{fingerprint}".encode()).hexdigest()[:16]
    return f"{readable}-{digest}"


def _file_name(kind: str, tokens: tuple[int, ...]) -> str:
    digest = hashlib.sha256(json.dumps([kind, tokens]).encode()).hexdigest()[:32]
    return digest + SUFFIX


class DiskCache:
    """The prompt caches under `folder`, within `budget` bytes (0: off)."""

    def __init__(self, folder: Path, budget: int, max_files: int = MAX_FILES) -> None:
        self.folder = folder
        self.budget = budget
        self.max_files = max_files
        self._entries: dict[Path, DiskEntry] | None = None  # read at the first use
        #: bytes of the files (any thread may read it: /metrics)
        self.nbytes = 0

    @property
    def on(self) -> bool:
        return self.budget > 0

    def _index(self) -> dict[Path, DiskEntry]:
        if self._entries is None:
            self._entries = {}
            for path in sorted(self.folder.glob("*/*")):
                entry = read_entry(path) if path.name.endswith(SUFFIX) else None
                if entry is None or path.name.startswith("."):
                    log.info("removing an unreadable or partial prompt cache file %s", path)
                    path.unlink(missing_ok=True)
                else:
                    self._add(entry)
            self._fit(0)
        return self._entries

    def resize(self, budget: int) -> None:
        """A live config edit: files over the new budget go, least recently used first."""
        self.budget = budget
        if self._entries is not None or self.folder.exists():
            self._fit(0)

    def _fit(self, incoming: int) -> None:
        """Remove least recently used files until a file of `incoming` more bytes (none when
        0) fits the budget and the number of files."""
        index = self._entries or {}
        rows = [(str(p), e.nbytes, e.used) for p, e in index.items()]
        room = max(0, self.max_files - (1 if incoming else 0))
        for name in lru_victims(rows, max(0, self.budget - incoming), room):
            self._drop(Path(name))

    def _add(self, entry: DiskEntry) -> None:
        if self._entries is None:
            self._entries = {}
        self._entries[entry.path] = entry
        self.nbytes += entry.nbytes

    def _drop(self, path: Path) -> None:
        entry = (self._entries or {}).pop(path, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
        path.unlink(missing_ok=True)

    def store(self, model: str, fingerprint: str, kind: str, tokens: list[int], cache: Any) -> bool:
        """Write one prompt cache (it covers `tokens`); False when it does not fit the budget.
        Files of the same model id with other weights (fingerprint) are removed first."""
        if not self.on:
            return False
        index = self._index()
        for stale in [
            p for p, e in index.items() if e.model == model and e.fingerprint != fingerprint
        ]:
            self._drop(stale)
        key = tuple(tokens)
        path = self.folder / _folder_name(model, fingerprint) / _file_name(kind, key)
        if path in index:
            os.utime(path)  # already there: it is recent again
            index[path].used = time.time()
            return True
        estimate = sum(c.nbytes for c in cache)
        if estimate > self.budget:
            return False
        self._fit(estimate)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{SUFFIX}")
        meta = {"model": model, "fingerprint": fingerprint, "kind": kind, "tokens": list(key)}
        try:
            save_prompt_cache(str(temporary), cache, {"mlxrouter": json.dumps(meta)})
            temporary.replace(path)  # readers see the whole file or none
        except OSError as exc:
            log.warning("could not write the prompt cache %s: %s", path, exc)
            temporary.unlink(missing_ok=True)
            return False
        entry = read_entry(path)
        if entry is None:
            self._drop(path)
            return False
        self._add(entry)
        if self.nbytes > self.budget:  # the file came out larger than its arrays
            self._fit(0)
        return path in index

    def find(
        self, model: str, fingerprint: str, kind: str, prompt: list[int], better_than: int
    ) -> tuple[list[int], Any] | None:
        """The cache on disk sharing the longest prefix with `prompt`, if it shares more than
        `better_than` tokens: its tokens and its loaded KV cache."""
        best, shared = None, better_than
        for entry in self._index().values():
            if entry.model != model or entry.fingerprint != fingerprint or entry.kind != kind:
                continue
            n = shared_length(entry.tokens, prompt)
            if n > shared:
                best, shared = entry, n
        if best is None:
            return None
        try:
            cache = load_prompt_cache(str(best.path))
        except Exception as exc:  # noqa: BLE001 - a bad file is a miss, and goes
            log.info("removing the unreadable prompt cache %s: %s", best.path, exc)
            self._drop(best.path)
            return None
        with contextlib.suppress(OSError):
            os.utime(best.path)
        best.used = time.time()
        return list(best.tokens), cache
