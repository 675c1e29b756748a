"""Loading on the engine thread: weights are read a slice per engine step, so the models
already loaded keep generating; the tokenizer loads beside the weights; a load can fail or be
unloaded half-way without harming anything else."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tinymodel import make_tiny_model

from mlxrouter.engine import Chunk, Engine, GenerationRequest, LoadSpec, SamplingParams
from mlxrouter.errors import ModelLoadError

GREEDY = SamplingParams(temperature=0)
# Token 2 is `<|im_end|>`, the tiny models' end of sequence: banning it keeps a stream going.
ENDLESS = SamplingParams(temperature=0, logit_bias={2: -100})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loading")
    make_tiny_model(root / "small", seed=1, context=8192)
    make_tiny_model(root / "wide", seed=2, hidden=256, layers=6)
    return root


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    # One array per slice: a load takes one engine step per weight array.
    engine = Engine(prompt_cache_bytes=0, load_slice_bytes=1)
    yield engine
    engine.close()


async def answer(engine: Engine, key: str) -> str:
    request = GenerationRequest(prompt="Hello world", max_tokens=8, sampling=GREEDY)
    stream = await engine.generate(key, request)
    return "".join([e.text async for e in stream if isinstance(e, Chunk)])


async def test_a_loaded_model_keeps_streaming_while_another_loads(
    engine: Engine, models: Path
) -> None:
    await engine.load(LoadSpec("small", models / "small"))
    stream = await engine.generate(
        "small", GenerationRequest(prompt="Hi", max_tokens=4000, sampling=ENDLESS)
    )
    arrivals: list[float] = []
    streaming = asyncio.Event()

    async def consume() -> None:
        async for event in stream:
            if isinstance(event, Chunk):
                arrivals.append(time.monotonic())
                streaming.set()

    consumer = asyncio.create_task(consume())
    await streaming.wait()
    started = time.monotonic()
    info = await engine.load(LoadSpec("wide", models / "wide"))
    ended = time.monotonic()
    stream.cancel()  # a cancelled stream just stops: its consumer is cancelled too
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer

    during = [t for t in arrivals if started < t < ended]
    # 6 layers of 9 arrays plus embedding and norm: one decode step of `small` per slice.
    assert len(during) >= 20, f"{len(during)} tokens streamed during a {ended - started:.2f} s load"
    assert info.nbytes > 1_000_000
    assert await answer(engine, "wide")


async def test_sliced_load_answers_like_a_load_in_one_go(engine: Engine, models: Path) -> None:
    whole = Engine(prompt_cache_bytes=0)
    try:
        await whole.load(LoadSpec("wide", models / "wide"))
        expected = await answer(whole, "wide")
    finally:
        whole.close()
    await engine.load(LoadSpec("wide", models / "wide"))
    assert await answer(engine, "wide") == expected


async def test_concurrent_loads_of_one_model_share_the_work(engine: Engine, models: Path) -> None:
    spec = LoadSpec("wide", models / "wide")
    first, second = await asyncio.gather(engine.load(spec), engine.load(spec))
    assert first == second


async def test_unload_during_a_load_fails_that_load_only(engine: Engine, models: Path) -> None:
    await engine.load(LoadSpec("small", models / "small"))
    loading = asyncio.create_task(engine.load(LoadSpec("wide", models / "wide")))
    await asyncio.sleep(0)  # let the load command go out first
    await engine.unload("wide")
    with pytest.raises(ModelLoadError, match="was unloaded"):
        await loading
    assert await answer(engine, "small")
    await engine.load(LoadSpec("wide", models / "wide"))
    assert await answer(engine, "wide")


async def test_weights_that_fail_to_read_fail_the_load_cleanly(
    engine: Engine, models: Path, tmp_path: Path
) -> None:
    """A weight file cut short after discovery (say, a copy still running) fails its load with
    the usual error when the slice is read, and the engine goes on serving."""
    broken = make_tiny_model(tmp_path / "broken", seed=3, hidden=256, layers=6)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    await engine.load(LoadSpec("small", models / "small"))
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        await engine.load(LoadSpec("broken", broken))
    assert engine.healthy
    assert await answer(engine, "small")


async def test_a_broken_tokenizer_fails_the_load_cleanly(engine: Engine, tmp_path: Path) -> None:
    broken = make_tiny_model(tmp_path / "broken", seed=4)
    (broken / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        await engine.load(LoadSpec("broken", broken))
    assert engine.healthy
