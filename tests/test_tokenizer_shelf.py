"""The tokenizer shelf's bookkeeping (pure), and its keys on real folders.

tokenizers 0.23 keeps ~0.9 KB for good from every instance that encodes once, so the engine
reuses a folder's tokenizer across loads; these tests pin what is kept and for how long. The
engine's use of it (a reload gets the same instance) is in tests/test_memory_leaks.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlxrouter.engine.tokenizer_shelf import TokenizerKey, TokenizerShelf, tokenizer_key


def key(name: str) -> TokenizerKey:
    return TokenizerKey(name, False, (), ())


def test_a_kept_tokenizer_is_handed_out_again() -> None:
    shelf = TokenizerShelf(keep=2)
    first = object()
    assert shelf.take(key("a")) is None
    assert shelf.put(key("a"), first) is first
    shelf.release(first)
    assert shelf.take(key("a")) is first  # off the released list, in use again
    assert len(shelf) == 1


def test_only_the_most_recently_released_are_kept() -> None:
    shelf = TokenizerShelf(keep=2)
    tokenizers = {name: object() for name in "abc"}
    for name, tokenizer in tokenizers.items():
        shelf.put(key(name), tokenizer)
    for name in "abc":
        shelf.release(tokenizers[name])
    assert len(shelf) == 2
    assert shelf.take(key("a")) is None  # released first: dropped
    assert shelf.take(key("b")) is tokenizers["b"]
    assert shelf.take(key("c")) is tokenizers["c"]


def test_tokenizers_in_use_are_never_dropped() -> None:
    shelf = TokenizerShelf(keep=0)
    used = object()
    shelf.put(key("a"), used)
    for name in "bcd":
        other = object()
        shelf.put(key(name), other)
        shelf.release(other)
    assert shelf.take(key("a")) is used


def test_shared_tokenizers_are_released_by_their_last_user() -> None:
    """Two entries on one tokenizer (a second load of the same files, or an adapter on its
    base): the first release keeps it in use."""
    shelf = TokenizerShelf(keep=0)
    base = object()
    shelf.put(key("a"), base)
    shelf.share(base)
    assert shelf.take(key("a")) is base  # three users
    shelf.release(base)
    shelf.release(base)
    assert len(shelf) == 1  # one user left
    shelf.release(base)
    assert len(shelf) == 0  # keep=0: the last release drops it
    shelf.release(base)  # unknown now: ignored
    shelf.share(object())  # unknown: ignored


def test_a_second_load_of_the_same_files_shares_the_first() -> None:
    """Two loads of one folder started before either finished: the second tokenizer loaded
    is dropped and the first one shared."""
    shelf = TokenizerShelf()
    first, second = object(), object()
    assert shelf.put(key("a"), first) is first
    assert shelf.put(key("a"), second) is first


def test_the_key_follows_the_tokenizer_files_not_the_weights(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = tokenizer_key(tmp_path, trust_remote_code=False, eos_token_ids=2)
    assert before == tokenizer_key(tmp_path, trust_remote_code=False, eos_token_ids=[2])
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert tokenizer_key(tmp_path, trust_remote_code=False, eos_token_ids=2) == before
    assert tokenizer_key(tmp_path, trust_remote_code=True, eos_token_ids=2) != before
    assert tokenizer_key(tmp_path, trust_remote_code=False, eos_token_ids=None) != before
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    added = tokenizer_key(tmp_path, trust_remote_code=False, eos_token_ids=2)
    assert added != before
    stat = (tmp_path / "tokenizer.json").stat()
    os.utime(tmp_path / "tokenizer.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert tokenizer_key(tmp_path, trust_remote_code=False, eos_token_ids=2) != added
