"""The pool over the real engine: memory really returned on eviction, and adapters that share
their base's arrays. Figures come from MLX's active-memory counter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tinymodel import make_tiny_adapter, make_tiny_model

from mlxrouter.engine import Chunk, Engine, GenerationRequest, LoadSpec, SamplingParams
from mlxrouter.pool import LeaseRequest, Pool, PoolLimits

MB = 1_000_000


@pytest.fixture(scope="module")
def big_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ~38 MB random models (large enough to see in active memory) and two adapters."""
    root = tmp_path_factory.mktemp("big")
    for name, seed in (("big-a", 1), ("big-b", 2)):
        make_tiny_model(root / name, seed=seed, hidden=512, layers=4)
    for name, seed in (("style-1", 1), ("style-2", 2)):
        make_tiny_adapter(root / name, root / "big-a", base_ref="big-a", seed=seed, layers=4)
    return root


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    # No prompt cache: these tests measure what weights cost.
    engine = Engine(prompt_cache_bytes=0)
    yield engine
    engine.close()


def model_request(root: Path, key: str) -> LeaseRequest:
    return LeaseRequest(spec=LoadSpec(key, root / key), estimated_bytes=40 * MB)


def adapter_request(root: Path, key: str) -> LeaseRequest:
    return LeaseRequest(
        spec=LoadSpec(key, root / "big-a", adapter_path=root / key, base_key="big-a"),
        estimated_bytes=2 * MB,
        base=model_request(root, "big-a"),
    )


async def answer(engine: Engine, key: str) -> str:
    stream = await engine.generate(
        key,
        GenerationRequest(
            prompt="Hello world", max_tokens=8, sampling=SamplingParams(temperature=0)
        ),
    )
    return "".join([e.text async for e in stream if isinstance(e, Chunk)])


async def test_eviction_returns_memory(engine: Engine, big_models: Path) -> None:
    pool = Pool(engine, PoolLimits(max_models=1))
    baseline = engine.active_memory()
    async with pool.lease(model_request(big_models, "big-a")):
        with_a = engine.active_memory()
    async with pool.lease(model_request(big_models, "big-b")):
        with_b = engine.active_memory()
    assert pool.evictions == 1
    assert with_a - baseline > 30 * MB
    # Only big-b is resident: big-a's memory went back when it was evicted.
    assert abs((with_b - baseline) - (with_a - baseline)) < 5 * MB
    await pool.close()
    assert engine.active_memory() - baseline < 1 * MB


async def test_adapters_share_the_base_weights(engine: Engine, big_models: Path) -> None:
    pool = Pool(engine, PoolLimits(max_models=3))
    baseline = engine.active_memory()
    async with pool.lease(model_request(big_models, "big-a")):
        base_cost = engine.active_memory() - baseline
        base_answer = await answer(engine, "big-a")
    async with pool.lease(adapter_request(big_models, "style-1")):
        first_adapter = engine.active_memory() - baseline - base_cost
        style_1 = await answer(engine, "style-1")
    async with pool.lease(adapter_request(big_models, "style-2")):
        second_adapter = engine.active_memory() - baseline - base_cost - first_adapter
        style_2 = await answer(engine, "style-2")
    adapter_file = (big_models / "style-1" / "adapters.safetensors").stat().st_size
    # Each adapter costs about its own file, not another copy of the base.
    assert first_adapter < 2 * adapter_file
    assert second_adapter < 2 * adapter_file
    assert base_cost > 10 * first_adapter
    assert len({base_answer, style_1, style_2}) == 3
    # Switching base <-> adapters cost no reload: three loads in all.
    loads_before = pool.loads
    for key in ("big-a", "style-1", "big-a", "style-2"):
        request = (
            model_request(big_models, key) if key == "big-a" else adapter_request(big_models, key)
        )
        async with pool.lease(request):
            assert (
                await answer(engine, key)
                == {"big-a": base_answer, "style-1": style_1, "style-2": style_2}[key]
            )
    assert pool.loads == loads_before == 3
    await pool.close()


async def test_evicting_a_base_takes_its_adapters(engine: Engine, big_models: Path) -> None:
    pool = Pool(engine, PoolLimits(max_models=2))
    baseline = engine.active_memory()
    async with pool.lease(adapter_request(big_models, "style-1")):
        pass
    assert {e.key for e in pool.entries()} == {"big-a", "style-1"}
    async with pool.lease(model_request(big_models, "big-b")):
        keys = {e.key for e in pool.entries()}
    assert keys == {"big-b"}
    await pool.close()
    assert engine.active_memory() - baseline < 1 * MB
