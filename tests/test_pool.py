"""Pool behaviour with a recording fake of the engine's load/unload effects."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mlxrouter.engine import LoadSpec, ModelInfo
from mlxrouter.errors import ModelLoadError, ModelTooLargeError, PoolBusyError
from mlxrouter.pool import LeaseRequest, Pool, PoolLimits


class FakeLoader:
    def __init__(self, *, delay: float = 0.01, fail: set[str] | None = None) -> None:
        self.delay = delay
        self.fail = fail or set()
        self.calls: list[tuple[str, str]] = []
        self.loaded: set[str] = set()

    async def load(self, spec: LoadSpec) -> ModelInfo:
        self.calls.append(("load", spec.key))
        await asyncio.sleep(self.delay)
        if spec.key in self.fail:
            raise ModelLoadError(f"The model `{spec.key}` could not be loaded")
        self.loaded.add(spec.key)
        return ModelInfo(
            nbytes=0, context_length=64, vocab_size=10, has_chat_template=True, load_seconds=0
        )

    async def unload(self, key: str) -> None:
        self.calls.append(("unload", key))
        self.loaded.discard(key)


def req(key: str, nbytes: int = 10, **kw: object) -> LeaseRequest:
    return LeaseRequest(spec=LoadSpec(key, Path("/m") / key), estimated_bytes=nbytes, **kw)  # type: ignore[arg-type]


async def test_concurrent_requests_share_one_load() -> None:
    loader = FakeLoader(delay=0.05)
    pool = Pool(loader, PoolLimits(max_models=2))

    async def use() -> None:
        async with pool.lease(req("a")):
            await asyncio.sleep(0.01)

    await asyncio.gather(*(use() for _ in range(5)))
    assert loader.calls == [("load", "a")]
    assert pool.entries()[0].in_flight == 0


async def test_lru_idle_entry_is_evicted() -> None:
    loader = FakeLoader()
    pool = Pool(loader, PoolLimits(max_models=2))
    for key in ["a", "b", "a", "c"]:
        async with pool.lease(req(key)):
            pass
    assert ("unload", "b") in loader.calls
    assert loader.loaded == {"a", "c"}


async def test_entry_in_use_is_not_evicted_and_waiter_gets_503() -> None:
    loader = FakeLoader()
    pool = Pool(loader, PoolLimits(max_models=1, queue_timeout=0.2))
    async with pool.lease(req("a")):
        with pytest.raises(PoolBusyError):
            async with pool.lease(req("b")):
                pass
        assert loader.loaded == {"a"}


async def test_waiter_proceeds_once_the_busy_entry_is_released() -> None:
    loader = FakeLoader()
    pool = Pool(loader, PoolLimits(max_models=1, queue_timeout=5))

    holding = asyncio.Event()

    async def hold_a() -> None:
        async with pool.lease(req("a")):
            holding.set()
            await asyncio.sleep(0.1)

    task = asyncio.create_task(hold_a())
    await holding.wait()
    async with pool.lease(req("b")) as lease:
        assert lease.key == "b"
    await task
    assert loader.calls == [("load", "a"), ("unload", "a"), ("load", "b")]


async def test_failed_load_fails_every_waiter_and_leaves_pool_consistent() -> None:
    loader = FakeLoader(delay=0.05, fail={"bad"})
    pool = Pool(loader, PoolLimits(max_models=2))

    async def use() -> None:
        async with pool.lease(req("bad")):
            pass

    results = await asyncio.gather(*(use() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ModelLoadError) for r in results)
    assert loader.calls == [("load", "bad")]
    assert pool.entries() == []
    async with pool.lease(req("good")):
        pass


async def test_model_larger_than_budget_is_refused_without_loading() -> None:
    loader = FakeLoader()
    pool = Pool(loader, PoolLimits(max_models=2, max_bytes=100))
    with pytest.raises(ModelTooLargeError):
        async with pool.lease(req("huge", nbytes=1000)):
            pass
    assert loader.calls == []


async def test_idle_ttl_unloads_and_pinned_stays() -> None:
    loader = FakeLoader()
    pool = Pool(loader, PoolLimits(max_models=3, idle_ttl=10))
    async with pool.lease(req("a")):
        pass
    async with pool.lease(req("p", pinned=True)):
        pass
    entry_time = max(e.last_used for e in pool.entries())
    assert await pool.expire_idle(now=entry_time + 5) == []
    assert await pool.expire_idle(now=entry_time + 11) == ["a"]
    assert loader.loaded == {"p"}


async def test_lower_max_models_evicts_idle_entries() -> None:
    loader = FakeLoader()
    pool = Pool(loader, PoolLimits(max_models=3))
    for key in ["a", "b", "c"]:
        async with pool.lease(req(key)):
            pass
    await pool.apply_limits(PoolLimits(max_models=1))
    assert loader.loaded == {"c"}
