"""Ollama's API (`/api/*`) through the real `ollama` Python client against a served daemon:
discovery (version, tags, show, ps), chat and generate streamed and whole, options, tools,
`format`, `think`, `keep_alive`, `:latest`, errors and the embeddings 501.

The models are tiny: the random `tiny-a`, the tool-emitting `toolie` (tests/toolmodel.py) and
the thinking `thinker` (tests/thinkmodel.py), whose greedy answers are fixed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from conftest import running_daemon, wait_until
from thinkmodel import ANSWER, REASONING

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "num_predict": 8}
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
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def daemon(agent_models: Path, tiny_models: Path) -> Iterator[tuple[str, Any]]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{agent_models}, {tiny_models}]\npool: {{max_models: 4}}\n"
    )
    with running_daemon(config) as served:
        yield served


@pytest.fixture(scope="module")
def client(daemon: tuple[str, Any]) -> Iterator[ollama.Client]:
    with ollama.Client(host=daemon[0], timeout=60) as sdk:
        yield sdk


# ---- discovery ------------------------------------------------------------------------------


def test_version_is_numeric(daemon: tuple[str, Any]) -> None:
    version = httpx.get(daemon[0] + "/api/version").json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 6, 4)


def test_list_names_every_model(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert {"tiny-a", "tiny-b", "toolie", "thinker"} <= set(models)
    tiny = models["tiny-a"]
    assert tiny.size and tiny.size > 0
    assert tiny.digest and len(tiny.digest) == 64
    assert tiny.modified_at is not None
    assert tiny.details is not None and tiny.details.format == "safetensors"


def test_show_gives_context_length_and_capabilities(client: ollama.Client) -> None:
    shown = client.show("toolie")
    info = shown.modelinfo or {}
    arch = info["general.architecture"]
    assert isinstance(info[f"{arch}.context_length"], int)
    assert shown.capabilities == ["completion", "tools"]
    assert client.show("thinker").capabilities == ["completion", "tools", "thinking"]
    assert client.show("tiny-a:latest").capabilities == ["completion"]


def test_architecture_is_the_models_own(client: ollama.Client) -> None:
    """config.json's `model_type`, in `model_info` and as the details' family."""
    shown = client.show("tiny-a")
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama"
    assert isinstance(info["llama.context_length"], int)
    assert shown.details.family == "llama" and shown.details.families == ["llama"]
    tags = {m.model: m for m in client.list().models}
    assert tags["toolie"].details.family == "llama"  # type: ignore[union-attr]


def test_thinking_is_a_capability_on_the_openai_cards_too(daemon: tuple[str, Any]) -> None:
    cards = {c["id"]: c for c in httpx.get(daemon[0] + "/v1/models").json()["data"]}
    assert "thinking" in cards["thinker"]["capabilities"]
    assert "thinking" not in cards["tiny-a"]["capabilities"]


def test_ps_lists_loaded_models(client: ollama.Client) -> None:
    client.generate("tiny-b", "Hi", options=GREEDY)
    running = {m.model: m for m in client.ps().models}
    assert "tiny-b" in running
    entry = running["tiny-b"]
    assert entry.size and entry.size == entry.size_vram
    assert entry.expires_at is not None


# ---- chat and generate ----------------------------------------------------------------------


def test_chat_whole(client: ollama.Client) -> None:
    reply = client.chat("tiny-a", messages=ASK, stream=False, options=GREEDY)
    assert reply.done is True
    assert reply.done_reason in ("stop", "length")
    assert reply.message.role == "assistant"
    assert isinstance(reply.message.content, str)
    assert reply.eval_count and reply.eval_count <= 8
    assert reply.prompt_eval_count and reply.prompt_eval_count > 0
    assert reply.total_duration and reply.total_duration > 0
    assert reply.load_duration is not None


def test_chat_streamed_matches_whole(client: ollama.Client) -> None:
    whole = client.chat("tiny-a", messages=ASK, options=GREEDY)
    parts = list(client.chat("tiny-a", messages=ASK, stream=True, options=GREEDY))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_durations_are_measured(client: ollama.Client, daemon: tuple[str, Any]) -> None:
    """The engine times the prefill and the generation; the load is the wait for the lease,
    which holds a load only when the model was not loaded."""
    httpx.post(daemon[0] + "/admin/unload", json={"model": "tiny-b"}, timeout=30)
    options = {"temperature": 0, "num_predict": 6}
    loading = client.chat("tiny-b", messages=ASK, options=options)
    loaded = client.chat("tiny-b", messages=ASK, options=options)
    streamed = list(client.chat("tiny-b", messages=ASK, options=options, stream=True))[-1]
    for reply in (loading, loaded, streamed):
        assert reply.eval_count == 6  # random weights: no early end at temperature 0
        parts = (reply.load_duration, reply.prompt_eval_duration, reply.eval_duration)
        assert all(part and part > 0 for part in parts)
        assert reply.total_duration and reply.total_duration >= sum(parts)  # type: ignore[arg-type]
    assert loading.load_duration > 10 * loaded.load_duration  # type: ignore[operator]
    # a tool call's text is held back until parsed, yet the generation is timed from its start
    call = client.chat("toolie", messages=ASK, tools=[WEATHER_TOOL], options=GREEDY)
    assert call.message.tool_calls
    assert call.eval_duration and call.eval_duration > 0
    assert call.prompt_eval_duration and call.prompt_eval_duration < call.total_duration  # type: ignore[operator]


def test_stream_is_ndjson(daemon: tuple[str, Any]) -> None:
    body = {"model": "tiny-a", "messages": ASK, "options": GREEDY}
    with httpx.stream("POST", daemon[0] + "/api/chat", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True and "done_reason" in lines[-1]
    assert all(line["done"] is False for line in lines[:-1])


def test_generate_whole_and_streamed(client: ollama.Client) -> None:
    whole = client.generate("tiny-a", "Once upon a time", system="Be brief.", options=GREEDY)
    assert whole.done and whole.eval_count
    parts = list(
        client.generate(
            "tiny-a", "Once upon a time", system="Be brief.", stream=True, options=GREEDY
        )
    )
    assert "".join(p.response or "" for p in parts) == whole.response
    raw = client.generate("tiny-a", "Once upon a time", raw=True, options=GREEDY)
    assert raw.done and raw.eval_count


def test_options_map_to_sampling(client: ollama.Client) -> None:
    options = {"temperature": 0.9, "seed": 11, "num_predict": 5, "top_k": 20, "top_p": 0.9}
    first = client.generate("tiny-a", "Hello", options=options)
    again = client.generate("tiny-a", "Hello", options=options)
    assert first.response == again.response  # the seed makes it repeatable
    assert first.eval_count and first.eval_count <= 5
    assert first.done_reason in ("stop", "length")


def test_tool_calls_have_object_arguments(client: ollama.Client) -> None:
    reply = client.chat(
        "toolie", messages=ASK, tools=[WEATHER_TOOL], options=GREEDY | {"num_predict": 64}
    )
    calls = reply.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert calls[0].function.arguments == {"city": "Paris"}
    # the call and its result go back in the next turn
    turn = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": "Sunny", "tool_name": "get_weather"},
    ]
    again = client.chat("toolie", messages=turn, tools=[WEATHER_TOOL], options=GREEDY)
    assert again.done


def test_tool_calls_streamed(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            "toolie",
            messages=ASK,
            tools=[WEATHER_TOOL],
            stream=True,
            options=GREEDY | {"num_predict": 64},
        )
    )
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]


def test_format_json_schema_constrains_the_answer(client: ollama.Client) -> None:
    reply = client.chat(
        "tiny-a",
        messages=ASK,
        format=CITY_SCHEMA,
        options={"temperature": 1.0, "seed": 3, "num_predict": 64},
    )
    answer = json.loads(reply.message.content or "")
    assert answer["city"] in ("Paris", "Rome") and isinstance(answer["sunny"], bool)
    plain = client.generate(
        "tiny-a", "Weather?", format="json", options={"seed": 3, "num_predict": 64}
    )
    assert isinstance(json.loads(plain.response or ""), dict)


def test_think_puts_reasoning_in_thinking(client: ollama.Client) -> None:
    reply = client.chat("thinker", messages=ASK, think=True, options={"temperature": 0})
    assert reply.message.thinking == "".join(REASONING)
    assert reply.message.content == "".join(ANSWER)
    parts = list(client.chat("thinker", messages=ASK, stream=True, options={"temperature": 0}))
    assert "".join(p.message.thinking or "" for p in parts) == "".join(REASONING)
    off = client.chat("thinker", messages=ASK, think=False, options={"temperature": 0})
    assert not off.message.thinking
    assert off.message.content == "".join(ANSWER)
    generated = client.generate("thinker", "Capital?", think=True, options={"temperature": 0})
    assert generated.thinking == "".join(REASONING)
    assert generated.response == "".join(ANSWER)


def test_latest_suffix_is_accepted(client: ollama.Client) -> None:
    reply = client.chat("tiny-a:latest", messages=ASK, options=GREEDY)
    assert reply.done and reply.model == "tiny-a:latest"


def test_keep_alive_zero_unloads_once_idle(client: ollama.Client, daemon: tuple[str, Any]) -> None:
    def loaded() -> set[str]:
        return {m.model or "" for m in client.ps().models}

    loading = client.generate("tiny-b", "", keep_alive="5m")  # an empty prompt loads
    assert loading.done and loading.done_reason == "load"
    assert "tiny-b" in loaded()
    client.chat("tiny-b", messages=ASK, options=GREEDY, keep_alive=0)
    wait_until(lambda: "tiny-b" not in loaded(), what="tiny-b to unload")


# ---- errors ---------------------------------------------------------------------------------


def test_unknown_model_is_404_in_ollamas_shape(
    client: ollama.Client, daemon: tuple[str, Any]
) -> None:
    for call in (
        lambda: client.chat("nope", messages=ASK),
        lambda: list(client.chat("nope", messages=ASK, stream=True)),
        lambda: client.generate("nope", "Hi"),
        lambda: client.show("nope"),
    ):
        with pytest.raises(ollama.ResponseError) as raised:
            call()
        assert raised.value.status_code == 404
        assert "nope" in raised.value.error
    response = httpx.post(daemon[0] + "/api/chat", json={"model": "nope", "messages": ASK})
    assert response.status_code == 404 and set(response.json()) == {"error"}


def test_bad_fields_are_400_and_unknown_ones_ignored(daemon: tuple[str, Any]) -> None:
    url = daemon[0] + "/api/chat"
    base = {"model": "tiny-a", "messages": ASK, "stream": False, "options": GREEDY}
    ok = httpx.post(url, json={**base, "mirostat": 2, "whatever": {"x": 1}}, timeout=60)
    assert ok.status_code == 200
    for bad in (
        {"options": {"temperature": -1}},
        {"keep_alive": "soon"},
        {"think": "very"},
        {"messages": [{"role": "robot", "content": "hi"}]},
    ):
        response = httpx.post(url, json={**base, **bad}, timeout=60)
        assert response.status_code == 400, bad
        assert isinstance(response.json()["error"], str)


def test_embed_to_a_chat_model_says_what_it_is(
    client: ollama.Client, daemon: tuple[str, Any]
) -> None:
    """Embeddings are served by embedding models; a chat model answers 400 naming its type."""
    with pytest.raises(ollama.ResponseError) as raised:
        client.embed("tiny-a", "hello")
    assert raised.value.status_code == 400
    assert "chat model" in str(raised.value.error)
    old = httpx.post(daemon[0] + "/api/embeddings", json={"model": "tiny-a", "prompt": "x"})
    assert old.status_code == 400 and "chat model" in old.json()["error"]


# ---- the real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_capital_of_france_is_paris(demo_model: Path) -> None:
    config = f"hf_cache: false\nmodel_dirs: [{demo_model.parent}]\n"
    with running_daemon(config) as (url, _), ollama.Client(host=url, timeout=120) as sdk:
        reply = sdk.chat(
            demo_model.name,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            options={"temperature": 0, "num_predict": 20},
        )
    assert "Paris" in (reply.message.content or "")
