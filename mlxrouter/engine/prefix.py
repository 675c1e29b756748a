"""The prompt (KV) cache of one loaded model: finished sequences' KV caches by token prefix
(mlx_lm's `LRUPromptCache`, up to `pool.prompt_cache_bytes`), so a follow-up turn runs only
the tokens it adds. Caches of different layouts (a quantized KV cache) are kept apart by a
`kind` that becomes part of the cache's key.

Engine thread only: the caches are MLX arrays.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache


class PrefixCache:
    """One loaded model's prompt cache; `max_bytes` 0 turns prefix reuse off."""

    def __init__(self, key: str, max_bytes: int) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self._cache = LRUPromptCache(max_bytes=max_bytes)

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
        if cache is not None and not rest:
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)  # the last token must run to give the next logits
            rest = prompt[-1:]
        return cache, list(rest)

    def keep(self, tokens: list[int], cache: Any, kind: str = "") -> None:
        """Keep a finished sequence's KV cache (it covers `tokens`): a follow-up turn starts
        from it."""
        if self.max_bytes > 0 and cache is not None:
            self._cache.insert_cache(self.key + kind, list(tokens), cache)

    def keep_removed(self, batch: Any, uids: list[int]) -> None:
        """Remove sequences from an mlx_lm `BatchGenerator`, keeping their KV caches (mlx_lm
        keeps cache and tokens in step, so one a stop string ended is kept too)."""
        removed = batch.remove(uids, return_prompt_caches=self.max_bytes > 0)
        for cache, tokens in removed.values():
            self.keep(list(tokens), cache)
