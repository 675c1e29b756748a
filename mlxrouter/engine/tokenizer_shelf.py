"""Tokenizers kept across loads of the same model files.

tokenizers 0.23 keeps, for the life of the process, about 0.9 KB of every `Tokenizer` instance
that has encoded once, and its whole BPE word cache (up to a few MB) once it has encoded varied
text (0.22 did not; docs/UPSTREAM-tokenizers-instance-leak.md), so a daemon that reloads models
all day would grow with every load. Reusing the instance that a folder's
files already produced avoids that, and skips the tokenizer's load time on a reload.

The shelf holds the tokenizers of the entries loaded now (no extra memory: they are in use)
and of the `keep` most recently released ones. A tokenizer is keyed by its folder, its load
options and the size and mtime of every file there but the weights, so an edited
tokenizer or template file is loaded afresh. Engine thread only; no MLX.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Tokenizers of unloaded models kept for their next load. Each holds its vocabulary (about
# 14 MB for a 49k-token vocabulary) outside the pool's byte budget, but dropping one that has
# encoded loses its whole word cache for good (tokenizers 0.23), and a config edit can unload
# every entry at once: with 2 kept, three models in a pool of two grew 0.86 KB a request in the
# soak's mix, with 8 kept 0.38 KB (docs/MEMORY.md).
KEEP_RELEASED = 8

# Files that are weights, not tokenizer or template: their changes do not touch the tokenizer.
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".npz", ".pt", ".pth")


@dataclass(frozen=True, slots=True)
class TokenizerKey:
    """What a loaded tokenizer depends on."""

    folder: str
    trust_remote_code: bool
    eos_token_ids: tuple[int, ...]
    files: tuple[tuple[str, int, int], ...]  # (name, size, mtime_ns) of the non-weight files


def tokenizer_key(folder: Path, *, trust_remote_code: bool, eos_token_ids: Any) -> TokenizerKey:
    """The key of `folder`'s tokenizer as it is on disk now (a few `stat` calls)."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            stat = path.stat()
            files.append((path.name, stat.st_size, stat.st_mtime_ns))
    if eos_token_ids is None:
        eos: tuple[int, ...] = ()
    elif isinstance(eos_token_ids, int):
        eos = (eos_token_ids,)
    else:
        eos = tuple(int(token) for token in eos_token_ids)
    return TokenizerKey(str(folder.resolve()), trust_remote_code, eos, tuple(files))


class TokenizerShelf:
    """Tokenizers by key: those in use (with how many entries use each) and the most recently
    released ones, oldest first."""

    def __init__(self, keep: int = KEEP_RELEASED) -> None:
        self.keep = keep
        self._in_use: dict[TokenizerKey, tuple[Any, int]] = {}
        self._released: OrderedDict[TokenizerKey, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._in_use) + len(self._released)

    def take(self, key: TokenizerKey) -> Any | None:
        """The tokenizer for `key`, now in use by one more entry; None if none is kept."""
        if key in self._in_use:
            tokenizer, users = self._in_use[key]
            self._in_use[key] = (tokenizer, users + 1)
            return tokenizer
        if key in self._released:
            tokenizer = self._released.pop(key)
            self._in_use[key] = (tokenizer, 1)
            return tokenizer
        return None

    def put(self, key: TokenizerKey, tokenizer: Any) -> Any:
        """A tokenizer just loaded for `key`, in use by one entry. If another load of the same
        files finished first, that one is shared and this one dropped (it has not encoded yet,
        so it leaves nothing behind)."""
        kept = self.take(key)
        if kept is not None:
            return kept
        self._in_use[key] = (tokenizer, 1)
        return tokenizer

    def share(self, tokenizer: Any) -> None:
        """One more entry uses `tokenizer` (an adapter on its base); unknown ones are ignored."""
        for key, (kept, users) in self._in_use.items():
            if kept is tokenizer:
                self._in_use[key] = (kept, users + 1)
                return

    def release(self, tokenizer: Any) -> None:
        """An entry using `tokenizer` is gone; the last user's release keeps it among the
        recently released (unknown tokenizers are ignored)."""
        for key, (kept, users) in self._in_use.items():
            if kept is tokenizer:
                if users > 1:
                    self._in_use[key] = (kept, users - 1)
                    return
                del self._in_use[key]
                self._released[key] = kept
                while len(self._released) > self.keep:
                    self._released.popitem(last=False)
                return

    def clear(self) -> None:
        self._in_use.clear()
        self._released.clear()
