"""The prompt (KV) cache of one loaded model: KV caches by token prefix (mlx_lm's
`LRUPromptCache`, up to `pool.prompt_cache_bytes`), kept when a prompt's prefill ends and when
its sequence finishes, so a follow-up turn runs only the tokens it adds and concurrent
requests sharing a prefix prefill it once (`Prefills`). Caches of different layouts (a
quantized KV cache) are kept apart by a `kind` that becomes part of the cache's key.

Engine thread only: the caches are MLX arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

if TYPE_CHECKING:
    from .disk_cache import DiskCache


@dataclass(slots=True)
class CacheCounts:
    """Requests that found a cached prefix (hits) or none (misses), per tier, for /metrics;
    the engine's, across its models' lives. A disk hit: the disk held a longer prefix than
    memory did."""

    memory_hits: int = 0
    memory_misses: int = 0
    disk_hits: int = 0
    disk_misses: int = 0


class PrefixCache:
    """One loaded model's prompt cache; `max_bytes` 0 turns prefix reuse off. With `disk`
    (and the weights' `fingerprint`), caches also come back from, and go to, the disk."""

    def __init__(
        self,
        key: str,
        max_bytes: int,
        *,
        counts: CacheCounts | None = None,
        disk: DiskCache | None = None,
        fingerprint: str = "",
    ) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self._cache = LRUPromptCache(max_bytes=max_bytes)
        self.counts = counts if counts is not None else CacheCounts()
        self.disk = disk if fingerprint else None  # without a fingerprint, a change goes unseen
        self.fingerprint = fingerprint

    @property
    def on(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes its caches hold (a quantized KV cache's are fewer)."""
        return int(self._cache.nbytes)

    def resize(self, nbytes: int) -> None:
        """A live config edit: caches over the new size drop their least recently used."""
        self.max_bytes = nbytes
        self._cache.max_bytes = nbytes
        self._cache.trim_to(n_bytes=nbytes)

    def fetch(self, prompt: list[int], kind: str = "") -> tuple[Any, list[int]]:
        """The KV cache of the longest earlier sequence sharing a prefix with `prompt` (a
        copy), and the prompt tokens still to process; at least one is always left to run."""
        if self.max_bytes <= 0:
            return None, prompt
        cache, rest = self._cache.fetch_nearest_cache(self.key + kind, prompt)
        cached = len(prompt) - len(rest)
        if cached:
            self.counts.memory_hits += 1
        else:
            self.counts.memory_misses += 1
        if self.disk is not None and self.disk.on:
            found = self.disk.find(self.key, self.fingerprint, kind, prompt, better_than=cached)
            if found is None:
                self.counts.disk_misses += 1
            else:
                self.counts.disk_hits += 1
                self.keep(*found, kind)
                cache, rest = self._cache.fetch_nearest_cache(self.key + kind, prompt)
        if cache is not None and not rest:
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)  # the last token must run to give the next logits
            rest = prompt[-1:]
        return cache, list(rest)

    def keep(self, tokens: list[int], cache: Any, kind: str = "") -> None:
        """Keep a KV cache that covers `tokens` (a prefilled prompt, a finished sequence):
        a request sharing a prefix starts from it."""
        if self.max_bytes > 0 and cache is not None:
            self._cache.insert_cache(self.key + kind, list(tokens), cache)

    def persist(self) -> int:
        """Write this model's caches to the disk cache (its model unloads): the most recent
        ones that fit the disk's budget, oldest first, so the newest are the last to go.
        Returns how many were written."""
        if self.disk is None or not self.disk.on or self.max_bytes <= 0:
            return 0
        chosen, total = [], 0
        # mlx_lm 0.32's LRU order: (key, tokens) per cache type, oldest first
        for model, tokens in reversed(self._cache._lru._lrus["assistant"]):
            entry = self._cache._trie.get(model, tokens)
            if total + entry.nbytes > self.disk.budget:
                break
            chosen.append((model[len(self.key) :], tokens, entry.prompt_cache))
            total += entry.nbytes
        return sum(
            self.disk.store(self.key, self.fingerprint, kind, list(tokens), cache)
            for kind, tokens, cache in reversed(chosen)
        )

    def keep_removed(self, batch: Any, uids: list[int]) -> None:
        """Remove sequences from an mlx_lm `BatchGenerator`, keeping their KV caches (mlx_lm
        keeps cache and tokens in step, so one a stop string ended is kept too)."""
        removed = batch.remove(uids, return_prompt_caches=self.max_bytes > 0)
        for cache, tokens in removed.values():
            self.keep(list(tokens), cache)


# A request waits for a prefill under way only when that saves it this many prompt tokens and
# at least half of what it would run: a template's role header alone is not worth a step's
# wait, a shared start that is most of a short prompt is (mlx_lm.server shares those too: with
# 16, eight 7-token prompts sharing 6 fell into one turn now and then and each prefilled them,
# figure f 0.76-0.78x in three of five quiet runs; with 4, 1.02x and 1.48x).
MIN_SHARED_TOKENS = 4


def shared_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Prefills:
    """Batched prompts whose prefill is under way, and the requests waiting for one of them
    to end so they start from its KV cache instead of prefilling the same prefix again (N
    concurrent requests with one system prompt prefill it once). Plain data."""

    def __init__(self) -> None:
        self._prompts: dict[int, list[int]] = {}
        self._waiting: dict[int, list[Any]] = {}

    def start(self, uid: int, prompt: list[int]) -> None:
        """Sequence `uid` prefills `prompt`; its KV cache covers all but the last token when
        its prefill ends."""
        self._prompts[uid] = prompt[:-1]

    def owner(self, prompt: list[int], cached: int) -> int | None:
        """The prefill under way worth waiting for: the one sharing the most of `prompt`,
        if it saves enough more than the `cached` tokens (see MIN_SHARED_TOKENS)."""
        best, owner = 0, None
        for uid, prefix in self._prompts.items():
            shared = shared_length(prefix, prompt)
            if shared > best:
                best, owner = shared, uid
        gain = best - cached
        if gain >= MIN_SHARED_TOKENS and 2 * gain >= len(prompt) - cached:
            return owner
        return None

    def wait(self, uid: int, item: Any) -> None:
        """`item` waits for sequence `uid`'s prefill to end."""
        self._waiting.setdefault(uid, []).append(item)

    def end(self, uid: int) -> list[Any]:
        """Sequence `uid`'s prefill ended (or the sequence did): what waited for it."""
        self._prompts.pop(uid, None)
        return self._waiting.pop(uid, [])

    def clear(self) -> list[Any]:
        """Forget every prefill (the batch is gone): everything that waited."""
        self._prompts.clear()
        waiting = [item for items in self._waiting.values() for item in items]
        self._waiting.clear()
        return waiting
