"""The HTTP API end to end on tiny random models: a real uvicorn server on loopback, the real
openai SDK and raw httpx, the real engine thread and mlx_lm generation."""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon, wait_until


@pytest.fixture(scope="module")
def daemon(tiny_models: Path) -> Iterator[tuple[str, Any]]:
    config = f"hf_cache: false\nmodel_dirs: [{tiny_models}]\npool: {{max_models: 2}}\n"
    with running_daemon(config) as served:
        yield served


@pytest.fixture(scope="module")
def client(daemon: tuple[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=daemon[0] + "/v1", api_key="unused", max_retries=0, timeout=60
    ) as sdk:
        yield sdk


@pytest.fixture
def http(daemon: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon[0], timeout=60) as c:
        yield c


def _reference(folder: Path, prompt_messages: list[dict[str, str]], max_tokens: int) -> str:
    """What mlx_lm itself answers at temperature 0, for comparison."""
    from mlx_lm import generate, load

    model, tokenizer = load(str(folder))
    prompt = tokenizer.apply_chat_template(prompt_messages, add_generation_prompt=True)
    return str(generate(model, tokenizer, prompt, max_tokens=max_tokens))


def test_models_list_has_both_models_with_metadata(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert {"tiny-a", "tiny-b"} <= set(models)
    card = models["tiny-a"].model_dump()
    assert card["object"] == "model"
    assert card["owned_by"] == "local"
    assert card["context_length"] == 256
    assert card["kind"] == "model"


def test_model_by_id_and_unknown_id(client: openai.OpenAI) -> None:
    assert client.models.retrieve("tiny-b").id == "tiny-b"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_chat_answers_match_mlx_lm_for_each_model_named(
    client: openai.OpenAI, tiny_models: Path
) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    for _ in range(2):  # alternate models in one daemon
        for name in ("tiny-a", "tiny-b"):
            reply = client.chat.completions.create(
                model=name,
                messages=messages,
                temperature=0,
                max_tokens=8,  # type: ignore[arg-type]
            )
            assert reply.model == name
            assert reply.choices[0].message.content == _reference(tiny_models / name, messages, 8)
            assert reply.usage is not None and reply.usage.completion_tokens == 8
            assert reply.choices[0].finish_reason == "length"


def test_streaming_chat_yields_chunks_then_finish_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="tiny-a",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client.chat.completions.create(
        model="tiny-a", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0
    )
    assert streamed == plain.choices[0].message.content


def test_text_completion_and_logprobs(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model="tiny-b", prompt="The quick", max_tokens=4, temperature=0, logprobs=3
    )
    choice = reply.choices[0]
    assert reply.object == "text_completion"
    assert choice.logprobs is not None
    assert len(choice.logprobs.tokens or []) == 4
    assert all(len(top) == 3 for top in choice.logprobs.top_logprobs or [])
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs or [])


def test_chat_logprobs_openai_style(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny-a",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
        # Sampled, so it may draw `<|im_end|>` (token 2) early: banned, it answers 3 tokens.
        logit_bias={"2": -100},
    )
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 3
    assert all(len(item.top_logprobs) == 2 for item in content)


def test_stop_string_is_honoured(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me"}]
    full = client.chat.completions.create(
        model="tiny-a", messages=messages, max_tokens=16, temperature=0
    )  # type: ignore[arg-type]
    text = full.choices[0].message.content or ""
    assert len(text) >= 4
    stop = text[2:4]
    cut = client.chat.completions.create(
        model="tiny-a",
        messages=messages,
        max_tokens=16,
        temperature=0,
        stop=[stop],  # type: ignore[arg-type]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_seed_repeats_a_sampled_answer(client: openai.OpenAI) -> None:
    def ask() -> str:
        reply = client.completions.create(
            model="tiny-b", prompt="Hello", max_tokens=8, temperature=1.0, seed=42
        )
        return reply.choices[0].text

    assert ask() == ask()


def test_missing_model_uses_the_only_default_or_errors(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "/etc/passwd", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "tiny-a", "messages": []}, 400, "messages"),
        (
            {"model": "tiny-a", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            400,
            "temperature",
        ),
        (
            {"model": "tiny-a", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5},
            400,
            "top_p",
        ),
        (
            {"model": "tiny-a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        ({"model": "tiny-a", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        (
            {"model": "tiny-a", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages[0].role",
        ),
        (
            {
                "model": "tiny-a",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 10000,
            },
            400,
            "max_tokens",
        ),
        (
            {
                "model": "tiny-a",
                "messages": [{"role": "user", "content": "x"}],
                "logit_bias": {"99999": 1},
            },
            400,
            "logit_bias",
        ),
        (
            {"model": "tiny-a", "messages": [{"role": "user", "content": "x" * 3000}]},
            400,
            "messages",
        ),
    ],
)
def test_bad_input_gets_an_openai_error(
    http: httpx.Client, body: dict[str, Any], status: int, param: str
) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert "Traceback" not in response.text
    assert http.get("/v1/models").status_code == 200


def test_context_length_exceeded_code(http: httpx.Client) -> None:
    body = {"model": "tiny-a", "prompt": "hello " * 400}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nope", 404), ("DELETE", "/v1/models", 405), ("GET", "/v1/chat/completions", 405)],
)
def test_routes_errors_use_the_envelope(
    http: httpx.Client, method: str, path: str, status: int
) -> None:
    response = http.request(method, path)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_malformed_json_is_a_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_health(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "ok"
    assert body["models"] >= 2


def test_client_disconnect_stops_generation_and_frees_the_lease(
    daemon: tuple[str, Any], http: httpx.Client
) -> None:
    """The lease comes back within a second of a dropped stream, by the response closing its
    session: the stream's generator is held alive here, so finalising it cannot be what frees
    the lease."""
    url, app = daemon
    pool = app.state.daemon.pool
    body = {"model": "tiny-b", "prompt": "Hello", "max_tokens": 200, "stream": True}
    with (
        httpx.Client(base_url=url, timeout=30) as c,
        c.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        held = [
            g
            for g in gc.get_objects()
            if inspect.isasyncgen(g) and g.ag_code.co_name == "sse_answer"
        ]
        assert held, "the stream's generator is alive while it streams"
    # The server notices the closed socket, cancels generation and releases the lease.
    wait_until(
        lambda: {e.key: e for e in pool.entries()}["tiny-b"].in_flight == 0,
        timeout=1,
        what="the lease to come back",
    )
    assert http.get("/v1/models").status_code == 200
    del held


async def test_concurrent_requests_to_one_model_are_batched_and_all_answered(
    daemon: tuple[str, Any],
) -> None:
    client = openai.AsyncOpenAI(base_url=daemon[0] + "/v1", api_key="x", max_retries=0)
    replies = await asyncio.gather(
        *(
            client.completions.create(
                model="tiny-a", prompt=f"Hello {i}", max_tokens=5, temperature=0
            )
            for i in range(6)
        )
    )
    assert all(r.usage is not None and r.usage.completion_tokens == 5 for r in replies)
    await client.close()


def test_responses_match_the_documented_schemas(http: httpx.Client) -> None:
    """The OpenAPI document's response models describe what is really sent."""
    import msgspec

    from mlxrouter.api.responses import ChatCompletion, Completion, ModelList
    from mlxrouter.status import Health, ModelCard

    chat = http.post(
        "/v1/chat/completions",
        json={
            "model": "tiny-a",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "logprobs": True,
            "top_logprobs": 2,
        },
    ).json()
    msgspec.convert(chat, ChatCompletion, strict=True)
    text = http.post(
        "/v1/completions", json={"model": "tiny-a", "prompt": "Hi", "max_tokens": 3, "logprobs": 2}
    ).json()
    msgspec.convert(text, Completion, strict=True)
    msgspec.convert(http.get("/v1/models").json(), ModelList, strict=True)
    msgspec.convert(http.get("/v1/models/tiny-a").json(), ModelCard, strict=True)
    msgspec.convert(http.get("/health").json(), Health, strict=True)
