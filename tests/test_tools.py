"""Tool calling and the request shapes IDE plugins send, end to end through the openai SDK.

The model is built so greedy decoding emits a fixed `<tool_call>` text; the chat template,
mlx_lm's tool parser and the HTTP path are the real ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon
from imagedata import data_url, png
from toolmodel import CITY_TOOL, tool_call_text

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}, "exact": {"type": "boolean"}},
            "required": ["zone", "exact"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def daemon(agent_models: Path, tiny_models: Path) -> Iterator[tuple[str, Any]]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{agent_models}, {tiny_models}]\npool: {{max_models: 3}}\n"
    )
    with running_daemon(config) as served:
        yield served


@pytest.fixture(scope="module")
def client(daemon: tuple[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=daemon[0] + "/v1", api_key="x", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_tool_call_is_parsed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="toolie",
        messages=ASK,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=40,  # type: ignore[list-item,arg-type]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert calls[0].id.startswith("call_")


def test_tool_call_is_streamed_as_delta_fragments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="toolie",
        messages=ASK,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=40,
        stream=True,  # type: ignore[list-item,arg-type]
    )
    chunks = list(stream)
    fragments = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [f.index for f in fragments] == [0]
    assert fragments[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(fragments[0].function.arguments or "") == {"city": "Paris"}  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in chunks)


def test_follow_up_with_the_tool_result_is_accepted(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="toolie",
        messages=ASK,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=40,  # type: ignore[list-item,arg-type]
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],  # type: ignore[union-attr]
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    follow_up = client.chat.completions.create(
        model="toolie",
        messages=history,
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=40,  # type: ignore[arg-type,list-item]
    )
    assert follow_up.choices[0].finish_reason in {"tool_calls", "stop", "length"}


def test_tool_choice_none_offers_no_tools(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="toolie",
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        temperature=0,
        max_tokens=40,  # type: ignore[list-item,arg-type]
    )
    # Without tools offered the text is not parsed: this model's fixed reply comes back as is.
    assert reply.choices[0].message.content == tool_call_text()
    assert reply.choices[0].finish_reason == "stop"


def ask_wild(client: openai.OpenAI, tool_choice: Any, **options: Any) -> Any:
    """Ask the random-weight model, which calls a tool only when decoding forces it."""
    return client.chat.completions.create(
        model="wild",
        messages=ASK,  # type: ignore[arg-type]
        tools=[CITY_TOOL, TIME_TOOL],  # type: ignore[list-item]
        tool_choice=tool_choice,
        **options,
    )


def test_named_tool_choice_forces_a_call_to_that_function(client: openai.OpenAI) -> None:
    reply = ask_wild(
        client,
        {"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=80,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_time"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert arguments["zone"] in {"UTC", "CET"}
    assert isinstance(arguments["exact"], bool)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_tool_choice_forces_a_call_while_streaming(
    client: openai.OpenAI, seed: int
) -> None:
    stream = ask_wild(client, "required", temperature=1.0, seed=seed, max_tokens=80, stream=True)
    names, arguments, finish = [], "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            if call.function and call.function.name:
                names.append(call.function.name)
            if call.function and call.function.arguments:
                arguments += call.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(names) == 1
    assert names[0] in {"get_weather", "get_time"}
    parsed = json.loads(arguments)
    assert parsed.get("city") in {"Paris", "Rome"} or parsed.get("zone") in {"UTC", "CET"}


def test_auto_tool_choice_leaves_the_random_model_alone(client: openai.OpenAI) -> None:
    """The control for the two tests above: unforced, this model writes no tool call."""
    reply = ask_wild(client, "auto", temperature=0, max_tokens=40)
    assert not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason != "tool_calls"


def test_a_forced_call_with_an_unusable_parameters_schema_is_a_400(
    daemon: tuple[str, Any],
) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}
    body = {"model": "wild", "messages": ASK, "tools": [tool], "tool_choice": "required"}
    response = httpx.post(daemon[0] + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools"
    assert httpx.get(daemon[0] + "/health").status_code == 200


def test_unknown_named_tool_choice_is_a_400(daemon: tuple[str, Any]) -> None:
    body = {
        "model": "toolie",
        "messages": ASK,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "other"}},
    }
    response = httpx.post(daemon[0] + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tool_choice"


def test_model_without_tool_support_refuses_tools(daemon: tuple[str, Any]) -> None:
    body = {"model": "tiny-a", "messages": ASK, "tools": [WEATHER_TOOL]}
    response = httpx.post(daemon[0] + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "tools"
    assert "does not support tools" in response.json()["error"]["message"]


def test_text_content_parts_are_accepted_and_images_refused(daemon: tuple[str, Any]) -> None:
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    ok = httpx.post(
        daemon[0] + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": [{"role": "user", "content": parts}], "max_tokens": 2},
        timeout=60,
    )
    assert ok.status_code == 200
    image = [{"type": "image_url", "image_url": {"url": data_url(png())}}]
    refused = httpx.post(
        daemon[0] + "/v1/chat/completions",
        json={"model": "tiny-a", "messages": [{"role": "user", "content": image}]},
        timeout=60,
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages[0].content[0]"
    assert "does not take images" in refused.json()["error"]["message"]


def test_compatibility_aliases_and_harmless_fields(daemon: tuple[str, Any]) -> None:
    body = {
        "model": "tiny-a",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 3,
        "logit_bias": {"2": -100},  # no end-of-sequence: exactly max_completion_tokens come back
        "user": "someone",
        "parallel_tool_calls": False,
        "metadata": {"k": "v"},
        "store": False,
    }
    response = httpx.post(daemon[0] + "/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3
    text = httpx.post(
        daemon[0] + "/completions",
        json={"model": "tiny-a", "prompt": "Hi", "max_tokens": 2},
        timeout=60,
    )
    assert text.status_code == 200


def test_models_carry_the_metadata_ide_pickers_read(daemon: tuple[str, Any]) -> None:
    listing = httpx.get(daemon[0] + "/v1/models").json()
    assert listing["object"] == "list"
    cards = {m["id"]: m for m in listing["data"]}
    assert cards["toolie"]["capabilities"] == ["chat", "completion", "tools"]
    assert cards["tiny-a"]["capabilities"] == ["chat", "completion"]
    assert cards["tiny-a"]["context_length"] == 256
    assert cards["tiny-a"]["quantization_bits"] is None
    assert cards["tiny-a"]["kind"] == "model" and cards["tiny-a"]["loaded"] in (True, False)
    one = httpx.get(daemon[0] + "/v1/models/toolie").json()
    assert one["capabilities"] == cards["toolie"]["capabilities"]
