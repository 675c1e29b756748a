"""OpenAI's Responses API (`/v1/responses`) through the real openai SDK against a served daemon:
plain and streamed answers, function tools, reasoning, `previous_response_id`, the store,
`text.format`, and the request Codex CLI sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon
from openai.types.responses import Response as OpenAIResponse
from thinkmodel import ANSWER, REASONING

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": False,
}
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def daemon(agent_models: Path, tiny_models: Path) -> Iterator[tuple[str, Any]]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{agent_models}, {tiny_models}]\npool: {{max_models: 3}}\n"
        "responses: {store_max_count: 50}\n"
    )
    with running_daemon(config) as served:
        yield served


@pytest.fixture(scope="module")
def url(daemon: tuple[str, Any]) -> str:
    return daemon[0]


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_plain_answer(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="tiny-a", input="Hello there", max_output_tokens=8, temperature=0
    )
    assert reply.object == "response" and reply.id.startswith("resp_")
    assert reply.model == "tiny-a"
    assert reply.status in ("completed", "incomplete")
    [message] = reply.output
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert reply.output_text == message.content[0].text
    assert reply.usage is not None
    assert reply.usage.input_tokens > 0 and 0 < reply.usage.output_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    if reply.status == "incomplete":
        assert reply.incomplete_details is not None
        assert reply.incomplete_details.reason == "max_output_tokens"


def _events(client: openai.OpenAI, **fields: Any) -> list[Any]:
    with client.responses.create(stream=True, **fields) as stream:
        return list(stream)


def _check_sequence(events: list[Any]) -> None:
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[-1].type in ("response.completed", "response.incomplete")


def test_streamed_answer(client: openai.OpenAI) -> None:
    events = _events(client, model="tiny-a", input="Hello", max_output_tokens=6, temperature=0)
    _check_sequence(events)
    types = [e.type for e in events]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text
    assert events[-2].item.content[0].text == text
    assert final.usage is not None and final.usage.output_tokens <= 6


def test_stream_helper_accumulates(client: openai.OpenAI) -> None:
    with client.responses.stream(model="toolie", input="Hi", tools=[WEATHER_TOOL]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.status == "completed"
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}


def test_function_call(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="toolie", input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    )
    [call] = reply.output
    assert call.type == "function_call"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id and call.id and call.id.startswith("fc_")
    assert call.status == "completed"


def test_function_call_streamed(client: openai.OpenAI) -> None:
    events = _events(client, model="toolie", input="Weather?", tools=[WEATHER_TOOL])
    _check_sequence(events)
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [e.item.type for e in done] == ["function_call"]
    assert done[0].item.call_id
    arguments = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(arguments[0].arguments) == {"city": "Paris"}
    delta = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert delta == arguments[0].arguments
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.output[0].call_id == done[0].item.call_id


def test_reasoning_items(client: openai.OpenAI) -> None:
    reply = client.responses.create(model="thinker", input="Capital of France?")
    kinds = [item.type for item in reply.output]
    assert kinds == ["reasoning", "message"]
    reasoning = reply.output[0]
    assert reasoning.content is not None
    assert reasoning.content[0].text.strip() == "".join(REASONING).strip()
    assert reply.output_text.strip() == "".join(ANSWER).strip()
    assert reply.usage is not None and reply.usage.output_tokens_details.reasoning_tokens > 0

    events = _events(client, model="thinker", input="Capital of France?")
    _check_sequence(events)
    thought = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert thought == reasoning.content[0].text
    [done] = [e for e in events if e.type == "response.reasoning_text.done"]
    assert done.text == thought
    assert [e.item.type for e in events if e.type == "response.output_item.done"] == [
        "reasoning",
        "message",
    ]


def test_reasoning_effort_none_turns_thinking_off(client: openai.OpenAI) -> None:
    reply = client.responses.create(
        model="thinker", input="Capital of France?", reasoning={"effort": "none"}
    )
    assert [item.type for item in reply.output] == ["message"]


def test_previous_response_and_store(client: openai.OpenAI, url: str) -> None:
    first = client.responses.create(
        model="toolie", input="Weather in Paris?", tools=[WEATHER_TOOL], instructions="Be brief."
    )
    call = first.output[0]
    assert call.type == "function_call"
    second = client.responses.create(
        model="tiny-a",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        max_output_tokens=4,
    )
    assert second.previous_response_id == first.id
    # the earlier turn (its input and its call) is in this prompt
    alone = client.responses.create(
        model="tiny-a",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        max_output_tokens=4,
        store=False,
    )
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens

    fetched = client.responses.retrieve(second.id)
    assert fetched.id == second.id and fetched.output_text == second.output_text
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    gone = httpx.delete(f"{url}/v1/responses/{second.id}")
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "invalid_request_error"


def test_input_items_list_what_a_response_answered(client: openai.OpenAI, url: str) -> None:
    first = client.responses.create(
        model="toolie", input="Weather in Paris?", tools=[WEATHER_TOOL], max_output_tokens=40
    )
    (call,) = first.output
    assert call.type == "function_call"
    second = client.responses.create(
        model="tiny-a",
        previous_response_id=first.id,
        input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
            {"role": "user", "content": [{"type": "input_text", "text": "And tomorrow?"}]},
        ],
        max_output_tokens=2,
    )
    # the SDK's pager: every item used, earlier turns included, newest first by default
    listed = list(client.responses.input_items.list(second.id))
    assert [item.type for item in listed] == [
        "message",
        "function_call_output",
        "function_call",
        "message",
    ]
    newest, output, earlier_call, oldest = listed
    assert newest.content[0].text == "And tomorrow?"  # type: ignore[union-attr]
    assert output.output == "sunny"  # type: ignore[union-attr]
    assert (earlier_call.id, earlier_call.call_id) == (call.id, call.call_id)  # type: ignore[union-attr]
    assert oldest.role == "user" and oldest.content[0].type == "input_text"  # type: ignore[union-attr]
    assert oldest.content[0].text == "Weather in Paris?"  # type: ignore[union-attr]
    assert len({item.id for item in listed}) == 4 and all(item.id for item in listed)
    # pages of two, oldest first, follow `after` until `has_more` is false
    page = client.responses.input_items.list(second.id, limit=2, order="asc")
    assert [item.id for item in page.data] == [item.id for item in reversed(listed)][:2]
    assert page.has_more is True
    assert [item.id for item in page] == [item.id for item in reversed(listed)]  # all pages
    raw = httpx.get(f"{url}/v1/responses/{second.id}/input_items?limit=1").json()
    assert raw["object"] == "list" and raw["has_more"] is True
    assert raw["first_id"] == raw["last_id"] == listed[0].id
    # unknown ids: 404 in the OpenAI envelope, through the SDK too
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_nope")
    missing = httpx.get(f"{url}/v1/responses/resp_nope/input_items")
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    for query in ("limit=0", "limit=101", "order=sideways", "after=item_nope"):
        bad = httpx.get(f"{url}/v1/responses/{second.id}/input_items?{query}")
        assert bad.status_code == 400, query
        assert set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    reply = client.responses.create(model="tiny-a", input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    events = _events(client, model="tiny-a", input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(events[-1].response.id)


def test_streamed_response_is_stored(client: openai.OpenAI) -> None:
    events = _events(client, model="toolie", input="Hi", tools=[WEATHER_TOOL])
    stored = client.responses.retrieve(events[-1].response.id)
    assert stored.output[0].type == "function_call"


def test_unknown_previous_response_is_404(url: str) -> None:
    body = {"model": "tiny-a", "input": "Hi", "previous_response_id": "resp_nope"}
    reply = httpx.post(url + "/v1/responses", json=body, timeout=60)
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["param"] == "previous_response_id" and "resp_nope" in error["message"]


def test_text_format_json_schema(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "name": "weather", "schema": CITY_SCHEMA, "strict": True}
    reply = client.responses.create(
        model="tiny-a",
        input="Weather?",
        text={"format": fmt},
        max_output_tokens=40,
        extra_body={"seed": 7},
    )
    value = json.loads(reply.output_text)
    assert value["city"] in {"Paris", "Rome", "Oslo"} and isinstance(value["sunny"], bool)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 3),
        ("max_output_tokens", 0),
        ("input", [{"type": "message", "role": "user", "content": [{"type": "input_image"}]}]),
        ("text", {"format": {"type": "json_schema", "name": "x"}}),
        ("tool_choice", "sometimes"),
        ("input", []),
    ],
)
def test_present_fields_are_validated(url: str, field: str, value: Any) -> None:
    body = {"model": "tiny-a", "input": "Hi", "tools": [WEATHER_TOOL], field: value}
    reply = httpx.post(url + "/v1/responses", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


def codex_request(model: str) -> dict[str, Any]:
    """What Codex CLI sends: developer instructions, an earlier turn with its reasoning, call
    and output, flat function tools beside hosted ones, and its bookkeeping fields."""
    shell = {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "array", "items": {"type": "string"}}},
            "required": ["command"],
            "additionalProperties": False,
        },
    }
    return {
        "model": model,
        "instructions": "You are Codex, a coding agent.",
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "<permissions>read-only</permissions>"}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "List the files"}],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "Use ls"}],
                "content": None,
                "encrypted_content": "opaque",
            },
            {
                "type": "function_call",
                "id": "fc_1",
                "name": "shell",
                "arguments": json.dumps({"command": ["ls"]}),
                "call_id": "call_1",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "README.md\n"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "There is README.md."}],
            },
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Why?"}],
            },
        ],
        "tools": [
            shell,
            WEATHER_TOOL,
            {"type": "web_search", "external_web_access": False},
            {"type": "namespace", "name": "mcp__docs", "description": "Docs", "tools": []},
            {"type": "local_shell"},
            {"type": "custom", "name": "apply_patch", "format": {"type": "text"}},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199-session",
        "client_metadata": {"originator": "codex_cli_rs"},
        "text": {"verbosity": "medium"},
        "service_tier": None,
    }


def test_codex_cli_request_streamed(url: str) -> None:
    with httpx.stream("POST", url + "/v1/responses", json=codex_request("toolie"), timeout=60) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line[len("data: ") :]) for line in lines]
    types = [e["type"] for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    [done] = [e for e in events if e["type"] == "response.output_item.done"]
    assert done["item"]["type"] == "function_call" and done["item"]["call_id"]
    assert types.index("response.output_item.done") < types.index("response.completed")
    usage = events[-1]["response"]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0


def test_codex_cli_request_plain(client: openai.OpenAI, url: str) -> None:
    for model in ("toolie", "wild"):  # a call; text from a random model with a tool template
        body = {**codex_request(model), "stream": False, "max_output_tokens": 4}
        answer = httpx.post(url + "/v1/responses", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        reply = OpenAIResponse.model_validate(answer.json())
        assert reply.usage is not None and reply.output
        with pytest.raises(openai.NotFoundError):  # store: false
            client.responses.retrieve(reply.id)
    assert reply.output[0].type == "message"


@pytest.mark.slow
def test_demo_model_knows_paris(demo_model: Path) -> None:
    config = f"hf_cache: false\nmodel_dirs: [{demo_model.parent}]\n"
    question = "What is the capital of France?"
    fields: dict[str, Any] = {"model": demo_model.name, "temperature": 0, "max_output_tokens": 40}
    with (
        running_daemon(config) as (base, _),
        openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0) as sdk,
    ):
        reply = sdk.responses.create(input=question, **fields)
        assert "Paris" in reply.output_text
        with sdk.responses.stream(input=question, **fields) as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert "Paris" in text
