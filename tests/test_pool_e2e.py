"""The pool under concurrent openai SDK traffic on the real SmolLM2 model: three model
folders, room for two, single-flight loads and clean 503s, no deadlock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import running_daemon

pytestmark = pytest.mark.slow

MODELS = ["smol-1", "smol-2", "smol-3"]


@pytest.fixture(scope="module")
def three_models(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("three")
    for name in MODELS:
        (root / name).mkdir()
        for file in demo_model.iterdir():
            os.link(file, root / name / file.name)  # hard links: three models, one copy on disk
    return root


@pytest.fixture(scope="module")
def daemon(three_models: Path) -> Iterator[tuple[str, Any]]:
    config = f"hf_cache: false\nmodel_dirs: [{three_models}]\npool: {{max_models: 2, queue_timeout: 120}}\n"
    with running_daemon(config) as served:
        yield served


async def ask(client: openai.AsyncOpenAI, model: str) -> str:
    try:
        reply = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=3,
            temperature=0,
        )
    except openai.APIStatusError as exc:
        return str(exc.status_code)  # the test accepts 503 (pool busy) and nothing else
    assert reply.model == model
    return "ok"


async def test_concurrent_requests_across_three_models(daemon: tuple[str, Any]) -> None:
    url, app = daemon
    pool = app.state.daemon.pool
    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="x", max_retries=0, timeout=300
    ) as client:
        # Two models, three concurrent requests each: exactly one load per model.
        first = await asyncio.gather(*(ask(client, m) for m in ["smol-1", "smol-2"] * 3))
        assert first == ["ok"] * 6
        assert pool.loads == 2

        # A third model needs room: one eviction, one load, however many ask at once.
        second = await asyncio.gather(*(ask(client, "smol-3") for _ in range(3)))
        assert second == ["ok"] * 3
        assert (pool.loads, pool.evictions) == (3, 1)

        # Everything at once: every request succeeds or gets a clean 503, and nothing hangs.
        mixed = await asyncio.wait_for(asyncio.gather(*(ask(client, m) for m in MODELS * 3)), 300)
        assert set(mixed) <= {"ok", "503"}
        assert mixed.count("ok") >= 3
        assert all(e.in_flight == 0 for e in pool.entries())
        assert len(pool.entries()) <= 2
