"""The requests IDE plugins send (see docs/CLIENTS.md), against a running daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_daemon

MODEL = "tiny-a"


@pytest.fixture(scope="module")
def url(tiny_models: Path) -> Iterator[str]:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (base, _):
        yield base


def stream_chat(
    url: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> list[dict[str, Any]]:
    """POST a streaming request; return the decoded SSE events, checking the [DONE] end."""
    with httpx.stream("POST", url + path, json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_continue_chat(url: str) -> None:
    events = stream_chat(
        url,
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful coding assistant."},
                {"role": "user", "content": "Write hello world in Python"},
            ],
            "max_tokens": 8,
            "temperature": 0.5,
            "stop": ["<|im_end|>"],
            "stream": True,
        },
    )
    assert events[-1]["choices"][0]["finish_reason"] in {"stop", "length"}


def test_zed_chat(url: str) -> None:
    events = stream_chat(
        url,
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are Zed's assistant."},
                {"role": "user", "content": [{"type": "text", "text": "Explain this code"}]},
            ],
            "stream": True,
            "max_completion_tokens": 8,
            "stop": [],
            "temperature": 1.0,
            "prompt_cache_key": "thread-1",
        },
    )
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def test_cline_chat_reads_usage(url: str) -> None:
    events = stream_chat(
        url,
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are Cline, a coding agent. " * 4},
                {"role": "user", "content": [{"type": "text", "text": "<task>list files</task>"}]},
            ],
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 8,
        },
    )
    assert events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] == 8


def test_bare_server_url_paths(url: str) -> None:
    assert httpx.get(url + "/models").json()["object"] == "list"
    stream_chat(
        url,
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2,
            "stream": True,
        },
        path="/chat/completions",
    )


def test_openai_sdk_snippet(url: str) -> None:
    from openai import OpenAI

    with OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Hello"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[-1].usage is not None
