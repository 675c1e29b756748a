"""response_format: the answer is constrained to valid JSON (llguidance masks the logits), so
even a random-weight model answers with JSON that fits the schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_daemon

CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Weather?"}]


@pytest.fixture(scope="module")
def url(tiny_models: Path) -> Iterator[str]:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (base, _):
        yield base


def chat(url: str, **fields: Any) -> httpx.Response:
    body = {"model": "tiny-a", "messages": ASK, "max_tokens": 40, "temperature": 0, **fields}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def test_json_schema_is_enforced(url: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": CITY_SCHEMA}}
    for temperature in (0, 1.0):
        reply = chat(url, response_format=fmt, temperature=temperature, seed=7).json()
        value = json.loads(reply["choices"][0]["message"]["content"])
        assert set(value) == {"city", "sunny"}
        assert value["city"] in {"Paris", "Rome", "Oslo"} and isinstance(value["sunny"], bool)
        assert reply["choices"][0]["finish_reason"] == "stop"


def test_json_schema_streamed(url: str) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": CITY_SCHEMA}}
    body = {
        "model": "tiny-a",
        "messages": ASK,
        "max_tokens": 40,
        "stream": True,
        "response_format": fmt,
    }
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert json.loads(text)["city"] in {"Paris", "Rome", "Oslo"}


def test_json_object_mode_starts_an_object(url: str) -> None:
    reply = chat(url, response_format={"type": "json_object"}, max_tokens=12).json()
    content = reply["choices"][0]["message"]["content"]
    assert content.startswith("{")
    if reply["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)


def test_text_format_is_unconstrained(url: str) -> None:
    plain = chat(url, max_tokens=8).json()["choices"][0]["message"]["content"]
    text = chat(url, max_tokens=8, response_format={"type": "text"}).json()["choices"][0][
        "message"
    ]["content"]
    assert plain == text


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}},
            },
        },
    ],
)
def test_bad_response_formats_are_400(url: str, fmt: dict[str, Any]) -> None:
    response = chat(url, response_format=fmt)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format"


@pytest.mark.slow
def test_real_model_answers_in_the_schema(demo_model: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"capital": {"type": "string", "maxLength": 20}},
        "required": ["capital"],
        "additionalProperties": False,
    }
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{demo_model.parent}]\n") as (base, _):
        body = {
            "model": demo_model.name,
            "messages": [
                {"role": "user", "content": "What is the capital of France? Answer in JSON."}
            ],
            "max_tokens": 30,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": schema},
            },
        }
        reply = httpx.post(base + "/v1/chat/completions", json=body, timeout=120).json()
    value = json.loads(reply["choices"][0]["message"]["content"])
    assert "Paris" in value["capital"]
