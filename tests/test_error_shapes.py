"""Errors answer in the shape of the API the client speaks, whatever raised them (routing,
guards, validation, the domain), and the daemon's root answers agent CLIs' first probe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_daemon


@pytest.fixture(scope="module")
def keyed(tiny_models: Path) -> Iterator[str]:
    config = f"hf_cache: false\nmodel_dirs: [{tiny_models}]\napi_key: s3cret\n"
    with running_daemon(config) as (url, _):
        yield url


def test_anthropic_paths_answer_in_anthropic_shape(keyed: str) -> None:
    missing = httpx.post(keyed + "/v1/messages/nothing-here", json={})
    assert missing.status_code == 404
    assert missing.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "POST /v1/messages/nothing-here is not an endpoint of this server",
        },
    }


def test_ollama_paths_answer_in_ollama_shape(keyed: str) -> None:
    missing = httpx.get(keyed + "/api/nothing-here", headers={"Authorization": "Bearer s3cret"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "GET /api/nothing-here is not an endpoint of this server"}


def test_openai_shape_elsewhere_and_x_api_key_accepted(keyed: str) -> None:
    body: dict[str, Any] = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    for headers in ({"Authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}):
        answer = httpx.post(keyed + "/v1/chat/completions", json=body, headers=headers)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "model_not_found"
    wrong = httpx.get(keyed + "/v1/models", headers={"x-api-key": "wrong"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"


def test_root_answers_head_and_get_without_a_key(keyed: str) -> None:
    assert httpx.head(keyed + "/").status_code == 200
    card = httpx.get(keyed + "/").json()
    assert card["name"] == "mlxrouter" and card["version"]
