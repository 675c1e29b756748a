"""Continuous batching and prompt-cache reuse change speed, not answers: at temperature 0,
batched answers equal one-at-a-time answers, and answers that start from a cached prefix
equal answers computed from scratch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_daemon

from mlxrouter.engine import Chunk, Engine, Finished, GenerationRequest, LoadSpec, SamplingParams

GREEDY = SamplingParams(temperature=0)
# Greedy decoding of a random model repeats one short token; seeded sampling varies them.
VARIED = SamplingParams(temperature=1.0, seed=5)
PROMPTS = ["Hello there", "The quick brown fox", "What is the capital of France?", "0123 abc"]


async def answer(
    engine: Engine,
    key: str,
    messages: list[dict[str, str]],
    max_tokens: int = 10,
    stop: tuple[str, ...] = (),
    sampling: SamplingParams = GREEDY,
) -> tuple[str, Finished]:
    stream = await engine.generate(
        key,
        GenerationRequest(
            messages=messages,
            max_tokens=max_tokens,
            stop=stop,
            sampling=sampling,
        ),
    )
    text, finished = [], None
    async for event in stream:
        if isinstance(event, Chunk):
            text.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    return "".join(text), finished


@pytest.fixture
async def engines(tiny_models: Path) -> AsyncIterator[tuple[Engine, Engine]]:
    """One engine with prompt caching, one without, each with tiny-a loaded."""
    cached, plain = Engine(), Engine(prompt_cache_bytes=0)
    for engine in (cached, plain):
        await engine.load(LoadSpec("tiny-a", tiny_models / "tiny-a"))
    yield cached, plain
    cached.close()
    plain.close()


async def test_batched_answers_equal_one_at_a_time(engines: tuple[Engine, Engine]) -> None:
    _, engine = engines
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    sequential = [await answer(engine, "tiny-a", chat) for chat in chats]
    batched = await asyncio.gather(*(answer(engine, "tiny-a", chat) for chat in chats))
    assert [text for text, _ in batched] == [text for text, _ in sequential]


async def test_cached_prefix_answers_equal_uncached_ones(engines: tuple[Engine, Engine]) -> None:
    cached, plain = engines
    first_turn = [{"role": "user", "content": "Hello there"}]
    reply, finished = await answer(cached, "tiny-a", first_turn)
    assert finished.cached_tokens == 0
    follow_up = [
        *first_turn,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And then?"},
    ]
    with_cache, finished = await answer(cached, "tiny-a", follow_up)
    assert finished.cached_tokens > 0  # the first turn's KV cache was reused
    without_cache, plain_finished = await answer(plain, "tiny-a", follow_up)
    assert plain_finished.cached_tokens == 0
    assert with_cache == without_cache
    # The same prompt again starts from the cache too, and answers the same.
    again, finished = await answer(cached, "tiny-a", follow_up)
    assert finished.cached_tokens > 0 and again == with_cache


async def token_texts(engine: Engine, key: str, messages: list[dict[str, str]]) -> list[str]:
    """The tokens of a VARIED answer, as text."""
    request = GenerationRequest(messages=messages, max_tokens=12, logprobs=0, sampling=VARIED)
    stream = await engine.generate(key, request)
    return [lp.token async for e in stream if isinstance(e, Chunk) for lp in e.logprobs]


async def test_an_answer_cut_by_a_stop_string_mid_token_is_cached_too(
    engines: tuple[Engine, Engine],
) -> None:
    """A stop string that starts inside a token is found in the text, not by mlx_lm's token
    matcher; the sequence's KV cache must still be kept for the follow-up turn."""
    cached, plain = engines
    turn = [{"role": "user", "content": "0123 abc"}]
    tokens = await token_texts(plain, "tiny-a", turn)
    at = next(
        i
        for i, t in enumerate(tokens)
        if i > 0 and len(t) >= 2 and t.isascii() and t.isprintable() and t[1:].strip()
    )
    stop = tokens[at][1:]
    reply, finished = await answer(
        cached, "tiny-a", turn, max_tokens=12, stop=(stop,), sampling=VARIED
    )
    assert finished.finish_reason == "stop"
    assert stop not in reply and len(reply) < len("".join(tokens))
    follow_up = [*turn, {"role": "assistant", "content": reply}, {"role": "user", "content": "So?"}]
    with_cache, finished = await answer(cached, "tiny-a", follow_up)
    without_cache, _ = await answer(plain, "tiny-a", follow_up)
    assert finished.cached_tokens > 0
    assert with_cache == without_cache


def test_usage_reports_cached_tokens(tiny_models: Path) -> None:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        body = {
            "model": "tiny-b",
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 5,
            "temperature": 0,
        }
        first = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        second = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert second["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]


# A system prompt long enough that waiting for another request's prefill of it pays off.
SYSTEM = "You are a careful assistant who answers briefly and checks every fact twice. " * 3
QUESTIONS = ["Hi", "Why?", "Name one", "Go on", "And?"]


def shared_chats() -> list[list[dict[str, str]]]:
    return [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in QUESTIONS
    ]


async def test_concurrent_requests_sharing_a_prefix_prefill_it_once(
    engines: tuple[Engine, Engine],
) -> None:
    """Requests arriving together start from the first one's KV cache as soon as its prefill
    ends (not when it finishes), and answer as they would from scratch."""
    cached, plain = engines
    shared = await asyncio.gather(*(answer(cached, "tiny-a", chat) for chat in shared_chats()))
    fresh = await asyncio.gather(*(answer(plain, "tiny-a", chat) for chat in shared_chats()))
    counts = sorted(finished.cached_tokens for _, finished in shared)
    assert counts[0] == 0 and all(n > 0 for n in counts[1:])
    assert [text for text, _ in shared] == [text for text, _ in fresh]


def test_concurrent_requests_report_the_shared_prefix_as_cached(tiny_models: Path) -> None:
    async def ask(client: Any, question: str) -> int:
        reply = await client.chat.completions.create(
            model="tiny-b",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            max_tokens=3,
            temperature=0,
        )
        return int(reply.usage.prompt_tokens_details.cached_tokens)

    async def ask_all(url: str) -> list[int]:
        from openai import AsyncOpenAI

        async with AsyncOpenAI(base_url=url + "/v1", api_key="unused") as client:
            return await asyncio.gather(*(ask(client, q) for q in QUESTIONS))

    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        counts = sorted(asyncio.run(ask_all(url)))
    assert counts[0] == 0 and all(n > 0 for n in counts[1:])
