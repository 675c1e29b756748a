"""Anthropic's Messages API end to end: the real `anthropic` SDK against a real served daemon,
with tiny random models, the tool-emitting model and the thinking chain model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from conftest import running_daemon, wait_until
from thinkmodel import ANSWER, REASONING, make_thinking_chain_model
from toolmodel import make_tool_model

from mlxrouter.api.session import CompletionSession
from mlxrouter.engine import Chunk, Finished

THOUGHT = "".join(REASONING)
ANSWERED = "".join(ANSWER)
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: Path
) -> Iterator[tuple[str, Any]]:
    root = tmp_path_factory.mktemp("anthropic-models")
    make_tool_model(root / "toolie")
    make_thinking_chain_model(root / "thinker")
    config = (
        f"hf_cache: false\nmodel_dirs: [{root}, {tiny_models}]\n"
        "pool: {max_models: 4, prompt_cache_bytes: 0}\n"
    )
    with running_daemon(config) as served:
        yield served


@pytest.fixture(scope="module")
def client(daemon: tuple[str, Any]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=daemon[0], api_key="x", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_plain_message(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(
        model="tiny-a",
        max_tokens=8,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[{"role": "user", "content": "Hello"}],
        extra_body={"temperature": 0, "top_k": 5, "top_p": 0.9},
        metadata={"user_id": "someone"},
    )
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.id.startswith("msg_")
    assert reply.model == "tiny-a"
    assert [block.type for block in reply.content] == ["text"]
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert 0 < reply.usage.output_tokens <= 8
    assert reply.usage.input_tokens > 0
    assert reply.usage.cache_read_input_tokens == 0


def test_streamed_message_matches_the_plain_one(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": "thinker",
        "max_tokens": 40,
        "messages": ASK,
        "extra_body": {"temperature": 0},
        "thinking": {"type": "disabled"},
    }
    plain = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert [b.type for b in final.content] == [b.type for b in plain.content] == ["text"]
    assert final.content[0].text == plain.content[0].text == ANSWERED  # type: ignore[union-attr]
    assert final.stop_reason == plain.stop_reason == "end_turn"
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_raw_stream_has_event_lines(daemon: tuple[str, Any]) -> None:
    body = {"model": "tiny-a", "max_tokens": 3, "messages": ASK, "stream": True}
    reply = httpx.post(daemon[0] + "/v1/messages", json=body, timeout=60)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in reply.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    datas = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert [d["type"] for d in datas] == names


def test_thinking_blocks(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(
        model="thinker",
        max_tokens=40,
        messages=ASK,
        extra_body={"temperature": 0},
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert [b.type for b in reply.content] == ["thinking", "text"]
    assert reply.content[0].thinking == THOUGHT  # type: ignore[union-attr]
    assert reply.content[1].text == ANSWERED  # type: ignore[union-attr]
    with client.messages.stream(
        model="thinker", max_tokens=40, messages=ASK, extra_body={"temperature": 0}
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert set(deltas) == {"thinking_delta", "text_delta"}
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == THOUGHT  # type: ignore[union-attr]
    # an earlier turn's thinking block is accepted in the history
    history = [*ASK, {"role": "assistant", "content": [b.model_dump() for b in final.content]}]
    history.append({"role": "user", "content": "And Rome?"})
    again = client.messages.create(model="thinker", max_tokens=40, messages=history)
    assert again.content


def test_tool_use_plain_and_streamed(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {
        "model": "toolie",
        "max_tokens": 40,
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "extra_body": {"temperature": 0},
    }
    reply = client.messages.create(**kwargs)
    assert reply.stop_reason == "tool_use"
    assert [b.type for b in reply.content] == ["tool_use"]
    call = reply.content[0]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}  # type: ignore[union-attr]
    with client.messages.stream(**kwargs) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas == ["input_json_delta"]
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]
    # the result goes back as a tool_result block
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": '{"temp": 21}'},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    follow_up = client.messages.create(**{**kwargs, "messages": history})
    assert follow_up.content


def test_tool_choice_none_offers_no_tools(client: anthropic.Anthropic) -> None:
    with_tools = client.messages.count_tokens(model="toolie", messages=ASK, tools=[WEATHER_TOOL])
    without = client.messages.count_tokens(model="toolie", messages=ASK)
    none = client.messages.count_tokens(
        model="toolie", messages=ASK, tools=[WEATHER_TOOL], tool_choice={"type": "none"}
    )
    assert with_tools.input_tokens > without.input_tokens == none.input_tokens


def test_count_tokens_matches_the_prompt(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(
        model="tiny-a", system="Be brief.", messages=[{"role": "user", "content": "Hello"}]
    )
    reply = client.messages.create(
        model="tiny-a",
        max_tokens=1,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert counted.input_tokens == reply.usage.input_tokens > 0


def test_claude_code_request_shapes(daemon: tuple[str, Any]) -> None:
    """`?beta=true`, system entries in messages, cache_control, context_management,
    output_config, server tools without input_schema, and max_tokens 32000 on a 4096-token
    model (capped, not refused)."""
    body = {
        "model": "thinker",
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "system", "content": "Extra rules."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
            },
        ],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
        "thinking": {"type": "disabled"},
        "context_management": {"edits": []},
        "output_config": {"effort": "high"},
        "metadata": {"user_id": "u"},
        "temperature": 1,
        "something_new": True,
    }
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"}
    url = daemon[0] + "/v1/messages?beta=true"
    reply = httpx.post(url, json=body, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"][0]["text"] == ANSWERED
    streamed = httpx.post(url, json={**body, "stream": True}, headers=headers, timeout=60)
    assert streamed.status_code == 200
    assert "event: message_stop" in streamed.text


def test_errors_in_anthropic_shape(client: anthropic.Anthropic, daemon: tuple[str, Any]) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=5, messages=ASK)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="tiny-a", max_tokens=5, messages=ASK, extra_body={"temperature": 3}
        )
    assert bad.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {"type": "invalid_request_error", "message": bad.value.body["error"]["message"]},  # type: ignore[index]
    }
    for wrong in ({"max_tokens": 0}, {"messages": []}, {"tool_choice": {"type": "maybe"}}):
        body = {"model": "tiny-a", "max_tokens": 5, "messages": ASK, **wrong}
        reply = httpx.post(daemon[0] + "/v1/messages", json=body, timeout=60)
        assert reply.status_code == 400
        assert reply.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="tiny-a",
            max_tokens=5,
            messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}],
        )


def test_models_list_through_the_sdk(client: anthropic.Anthropic) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"tiny-a", "toolie", "thinker"} <= ids


def test_api_key_via_x_api_key(tiny_models: Path) -> None:
    config = f"hf_cache: false\nmodel_dirs: [{tiny_models}]\napi_key: sesame\n"
    with (
        running_daemon(config) as (url, _),
        anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0) as wrong,
    ):
        with pytest.raises(anthropic.AuthenticationError) as denied:
            wrong.messages.create(model="tiny-a", max_tokens=2, messages=ASK)
        assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        bare = httpx.post(url + "/v1/messages?beta=true", json={"max_tokens": 2}, timeout=30)
        assert bare.status_code == 401
        assert bare.json()["error"]["type"] == "authentication_error"
        with anthropic.Anthropic(base_url=url, api_key="sesame", max_retries=0) as sdk:
            assert sdk.messages.create(model="tiny-a", max_tokens=2, messages=ASK).content


def test_stop_sequence_is_named(client: anthropic.Anthropic, daemon: tuple[str, Any]) -> None:
    kwargs: dict[str, Any] = {
        "model": "thinker",
        "max_tokens": 40,
        "messages": ASK,
        "thinking": {"type": "disabled"},
        "stop_sequences": ["nowhere", " is"],
        "extra_body": {"temperature": 0},
    }
    reply = client.messages.create(**kwargs)
    assert reply.content[0].text == ANSWER[0]  # type: ignore[union-attr]
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", " is")
    with client.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == ANSWER[0]  # type: ignore[union-attr]
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", " is")
    # no stop string matched: end_turn, and no stop_sequence in the delta
    body = {**kwargs, "stop_sequences": ["nowhere"], "stream": True}
    del body["extra_body"]
    raw = httpx.post(daemon[0] + "/v1/messages", json=body, timeout=60)
    datas = [json.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
    (delta,) = [d["delta"] for d in datas if d["type"] == "message_delta"]
    assert delta == {"stop_reason": "end_turn", "stop_sequence": None}


def test_message_start_counts_the_prompt(client: anthropic.Anthropic) -> None:
    kwargs: dict[str, Any] = {"model": "tiny-a", "max_tokens": 3, "messages": ASK}
    counted = client.messages.count_tokens(model="tiny-a", messages=ASK).input_tokens
    with client.messages.stream(**kwargs) as stream:
        (start,) = [event for event in stream if event.type == "message_start"]
        final = stream.get_final_message()
    assert start.message.usage.input_tokens == final.usage.input_tokens == counted > 0


# ---- the heartbeat: pings while nothing comes -----------------------------------------------


@pytest.fixture
def full_pool(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[httpx.Client, Any]]:
    """A served daemon with room for one model, taken by the pinned `tiny-b`: a request for
    `tiny-a` waits for room (up to 3 s) until `tiny-b` is unloaded. Pings every 0.2 s."""
    from mlxrouter.api.anthropic import answers

    monkeypatch.setattr(answers, "PING_SECONDS", 0.2)
    config = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
        "pool: {max_models: 1, queue_timeout: 3}\nmodels: {tiny-b: {pinned: true}}\n"
    )
    with running_daemon(config) as (url, app), httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/admin/load", json={"model": "tiny-b"}).status_code == 200
        yield http, app


def _events(lines: Iterator[str]) -> Iterator[str]:
    """The event names of an SSE stream, as they come."""
    for line in lines:
        if line.startswith("event: "):
            yield line[7:]


ASK_TINY = {"model": "tiny-a", "max_tokens": 3, "messages": ASK, "stream": True}


def test_pings_while_waiting_for_room_then_the_message(
    full_pool: tuple[httpx.Client, Any],
) -> None:
    http, app = full_pool
    with http.stream("POST", "/v1/messages", json=ASK_TINY) as reply:
        assert reply.status_code == 200
        names = _events(reply.iter_lines())
        seen = [next(names), next(names)]
        assert seen == ["ping", "ping"]  # still waiting: tiny-b holds the only room
        assert http.post("/admin/unload", json={"model": "tiny-b"}).status_code == 200
        seen += list(names)
    assert seen[seen.index("message_start") - 1] == "ping"
    assert seen[-2:] == ["message_delta", "message_stop"]
    assert app.state.daemon.pool.is_loaded("tiny-a")
    # the usage is known at message_start, after the wait
    again = http.post("/v1/messages", json=ASK_TINY)
    start = json.loads(again.text.split("data: ", 1)[1].split("\n", 1)[0])
    assert start["type"] == "message_start"
    assert start["message"]["usage"]["input_tokens"] > 0


def test_a_wait_that_fails_after_the_pings_is_an_error_event(
    full_pool: tuple[httpx.Client, Any],
) -> None:
    http, app = full_pool
    reply = http.post("/v1/messages", json=ASK_TINY)
    assert reply.status_code == 200  # the headers went out with the first ping
    names = list(_events(iter(reply.text.splitlines())))
    assert names[:2] == ["ping", "ping"] and names[-1] == "error"
    assert "message_start" not in names
    error = json.loads(reply.text.rsplit("data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
    assert all(entry.in_flight == 0 for entry in app.state.daemon.pool.entries())


def test_a_client_gone_while_waiting_leaves_no_lease(full_pool: tuple[httpx.Client, Any]) -> None:
    http, app = full_pool
    pool = app.state.daemon.pool
    with http.stream("POST", "/v1/messages", json=ASK_TINY) as reply:
        assert next(_events(reply.iter_lines())) == "ping"
    # the wait goes on without its client; once it gets room, what it took is let go
    assert http.post("/admin/unload", json={"model": "tiny-b"}).status_code == 200
    wait_until(lambda: pool.is_loaded("tiny-a"), what="tiny-a loaded")
    wait_until(lambda: all(e.in_flight == 0 for e in pool.entries()), what="no lease held")
    assert http.post("/v1/messages", json={**ASK_TINY, "stream": False}).status_code == 200


class _SlowStream:
    """A stand-in engine stream whose first event comes late, as after a long prefill."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self) -> AsyncIterator[Chunk | Finished]:
        await asyncio.sleep(self.delay)
        yield Chunk(text="late")
        yield Finished(finish_reason="stop", prompt_tokens=3, completion_tokens=1)


def _slow_session(daemon: Any, delay: float) -> CompletionSession:
    session = CompletionSession(daemon, "chat", model=None, adapters=None, keep_alive=None)
    session._streams = [_SlowStream(delay)]  # type: ignore[list-item]
    session._finished = [None]
    return session


def test_heartbeat_yields_markers_without_losing_events(daemon: tuple[str, Any]) -> None:
    real = daemon[1].state.daemon

    async def run() -> tuple[list[Any], list[Any]]:
        beating = [item async for item in _slow_session(real, 0.3).events(0.05)]
        plain = [item async for item in _slow_session(real, 0.1).events()]
        return beating, plain

    beating, plain = asyncio.run(run())
    assert beating.count(None) >= 3
    assert [item for item in beating if item is not None] == plain
    assert [type(event) for _, event in plain] == [Chunk, Finished]


def test_pings_are_sent_while_nothing_comes(daemon: tuple[str, Any]) -> None:
    from mlxrouter.api.anthropic.answers import sse_message

    real = daemon[1].state.daemon

    async def run() -> list[bytes]:
        session = _slow_session(real, 0.3)
        return [part async for part in sse_message(session, "msg_1", ping_seconds=0.05)]

    names = [p.split(b"\n")[0].decode() for p in asyncio.run(run())]
    assert names[0] == "event: message_start"
    assert names.count("event: ping") >= 3
    assert names[-1] == "event: message_stop"
    assert names.index("event: content_block_start") > names.index("event: ping")


@pytest.mark.slow
def test_capital_of_france_is_paris(demo_model: Path) -> None:
    config = f"hf_cache: false\nmodel_dirs: [{demo_model.parent}]\n"
    with (
        running_daemon(config) as (url, _),
        anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=120) as sdk,
    ):
        reply = sdk.messages.create(
            model=demo_model.name,
            max_tokens=20,
            extra_body={"temperature": 0},
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
    assert "Paris" in reply.content[0].text  # type: ignore[union-attr]
