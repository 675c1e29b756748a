"""Prompt caches on disk: a conversation continued after its model was evicted, or after a
daemon restart, starts from its cached prefix and answers as it would from scratch; changed
weights never reuse old caches; torn files are ignored and removed; the folder stays within
its budget."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
import mlx.core as mx
import pytest
from conftest import running_daemon
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm.models.cache import KVCache

from mlxrouter.engine.disk_cache import SUFFIX, DiskCache, lru_victims

FIRST = [{"role": "user", "content": "Tell me about the sea"}]


def ask(url: str, model: str, messages: list[dict[str, str]]) -> tuple[str, int]:
    body = {"model": model, "messages": messages, "max_tokens": 6, "temperature": 0}
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()
    text = reply["choices"][0]["message"]["content"]
    return text, int(reply["usage"]["prompt_tokens_details"]["cached_tokens"])


def follow_up(reply: str) -> list[dict[str, str]]:
    return [*FIRST, {"role": "assistant", "content": reply}, {"role": "user", "content": "More"}]


def config(models: Path, **pool: object) -> str:
    keys = ", ".join(f"{key}: {value}" for key, value in pool.items())
    return f"hf_cache: false\nmodel_dirs: [{models}]\npool: {{{keys}}}\n"


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


@pytest.fixture
def models(tiny_models: Path, tmp_path: Path) -> Path:
    """Copies of tiny-a and tiny-b: a test may change their files."""
    folder = tmp_path / "models"
    for name in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny_models / name, folder / name)
    return folder


@pytest.fixture
def no_cache_answer(models: Path) -> Any:
    """The follow-up's greedy answer with no prompt cache at all."""

    def answer(reply: str) -> str:
        plain = config(models, prompt_cache_bytes=0, disk_cache_bytes=0)
        with running_daemon(plain) as (url, _):
            return ask(url, "tiny-a", follow_up(reply))[0]

    return answer


def test_a_conversation_continued_after_eviction_starts_from_the_disk(
    models: Path, tmp_path: Path, no_cache_answer: Any
) -> None:
    with running_daemon(config(models, max_models=1), cache_dir=tmp_path / "cache") as (url, _):
        reply, _ = ask(url, "tiny-a", FIRST)
        ask(url, "tiny-b", FIRST)  # evicts tiny-a, whose caches go to disk
        assert metric(url, "mlxrouter_prompt_cache_disk_bytes") > 0
        text, cached = ask(url, "tiny-a", follow_up(reply))
        assert metric(url, 'mlxrouter_prompt_cache_hits_total{tier="disk"}') == 1
    assert cached > 0
    assert text == no_cache_answer(reply)


def test_a_conversation_continued_after_a_restart_starts_from_the_disk(
    models: Path, tmp_path: Path, no_cache_answer: Any
) -> None:
    cache = tmp_path / "cache"
    with running_daemon(config(models), cache_dir=cache) as (url, _):
        reply, cached = ask(url, "tiny-a", FIRST)
    assert cached == 0
    with running_daemon(config(models), cache_dir=cache) as (url, _):
        text, cached = ask(url, "tiny-a", follow_up(reply))
    assert cached > 0
    assert text == no_cache_answer(reply)


def test_changed_weights_do_not_reuse_the_old_caches(models: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with running_daemon(config(models), cache_dir=cache) as (url, _):
        reply, _ = ask(url, "tiny-a", FIRST)
    weights = next((models / "tiny-a").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"")  # same bytes, a new file: a new fingerprint
    with running_daemon(config(models), cache_dir=cache) as (url, _):
        _, cached = ask(url, "tiny-a", follow_up(reply))
        assert metric(url, 'mlxrouter_prompt_cache_misses_total{tier="disk"}') == 1
    assert cached == 0


def test_the_disk_cache_is_off_at_zero(models: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with running_daemon(config(models, disk_cache_bytes=0), cache_dir=cache) as (url, _):
        ask(url, "tiny-a", FIRST)
    assert not list(cache.rglob(f"*{SUFFIX}"))


# ---- the folder itself (MLX arrays made on this thread, as the engine's are on its own) ----


def kv_cache(tokens: int, seed: int = 0) -> list[Any]:
    """A two-layer KV cache holding `tokens` positions."""
    mx.random.seed(seed)
    layers = []
    for _ in range(2):
        layer = KVCache()
        keys = mx.random.normal((1, 2, tokens, 8))
        layer.update_and_fetch(keys, keys + 1)
        layers.append(layer)
    mx.eval([c.state for c in layers])
    return layers


def files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"*{SUFFIX}"))


def test_a_truncated_file_is_ignored_and_removed(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, 10**7)
    tokens = list(range(40))
    assert disk.store("m", "f", "", tokens, kv_cache(len(tokens)))
    (path,) = files(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    again = DiskCache(tmp_path, 10**7)  # a restart reads the folder
    assert again.find("m", "f", "", [*tokens, 1], better_than=0) is None
    assert not path.exists() and again.nbytes == 0


def test_a_file_comes_back_for_a_matching_prefix_only(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path, 10**7)
    tokens = list(range(30))
    disk.store("m", "f", "", tokens, kv_cache(len(tokens)))
    found = DiskCache(tmp_path, 10**7).find("m", "f", "", [*tokens[:20], 99], better_than=0)
    assert found is not None and found[0] == tokens and found[1][0].offset == len(tokens)
    assert disk.find("m", "other weights", "", tokens, better_than=0) is None
    assert disk.find("m", "f", "#kv8/64", tokens, better_than=0) is None
    assert disk.find("m", "f", "", tokens, better_than=len(tokens)) is None


def check_budget(sizes: list[int], budget: int, folder: Path) -> None:
    disk = DiskCache(folder, budget)
    for i, size in enumerate(sizes):
        disk.store("m", "f", "", [i, *range(size)], kv_cache(size, seed=i))
        on_disk = sum(p.stat().st_size for p in files(folder))
        assert on_disk <= budget
        assert on_disk == disk.nbytes


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=8), st.integers(0, 60_000))
def test_the_budget_is_never_exceeded(sizes: list[int], budget: int) -> None:
    """Caches of random sizes against random budgets: the files on disk never exceed it."""
    with tempfile.TemporaryDirectory() as folder:
        check_budget(sizes, budget, Path(folder))


def test_lru_victims_are_the_least_recently_used() -> None:
    rows = [("old", 5, 1.0), ("new", 5, 3.0), ("mid", 5, 2.0)]
    assert lru_victims(rows, 10) == ["old"]
    assert lru_victims(rows, 4) == ["old", "mid", "new"]
    assert lru_victims(rows, 15) == []


def test_lru_victims_keep_at_most_max_files() -> None:
    rows = [("old", 5, 1.0), ("new", 5, 3.0), ("mid", 5, 2.0)]
    assert lru_victims(rows, 100, max_files=2) == ["old"]
    assert lru_victims(rows, 100, max_files=0) == ["old", "mid", "new"]
    assert lru_victims(rows, 100, max_files=3) == []


def test_the_number_of_files_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    """The index costs memory per file, so a big byte budget of small files is capped in
    files too: the oldest go, the newest stay findable (also after a restart)."""
    disk = DiskCache(tmp_path, 10**9, max_files=3)
    prompts = [[i, *range(20)] for i in range(5)]
    for i, tokens in enumerate(prompts):
        assert disk.store("m", "f", "", tokens, kv_cache(len(tokens), seed=i))
    assert len(files(tmp_path)) == 3
    again = DiskCache(tmp_path, 10**9, max_files=3)
    for tokens in prompts[:2]:
        assert again.find("m", "f", "", [*tokens, 1], better_than=0) is None
    for tokens in prompts[2:]:
        found = again.find("m", "f", "", [*tokens, 1], better_than=0)
        assert found is not None and found[0] == tokens
