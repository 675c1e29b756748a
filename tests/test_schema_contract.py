"""Schemathesis against the daemon's own OpenAPI document (/schema/openapi.json): generated
requests for every operation, a bounded number of examples each. Whatever it sends, the daemon
answers below 500, and every error uses its surface's envelope (OpenAI's, Anthropic's under
/v1/messages, Ollama's under /api/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from conftest import running_daemon
from hypothesis import HealthCheck, given, settings

EXAMPLES_PER_OPERATION = 25
SURFACE_OPERATIONS = {
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"),
    ("GET", "/v1/responses/{response_id}/input_items"),
    ("GET", "/api/version"),
    ("GET", "/api/tags"),
    ("POST", "/api/show"),
    ("GET", "/api/ps"),
    ("POST", "/api/chat"),
    ("POST", "/api/generate"),
    ("GET", "/admin/activity"),
    ("GET", "/admin/events"),
}
#: a live stream never ends by itself; tests/test_activity.py reads it
ENDLESS = {("GET", "/admin/events")}


def test_every_operation_answers_without_server_errors(tiny_models: Path) -> None:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        schema = schemathesis.openapi.from_url(url + "/schema/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12
        # every surface's routes are documented, so generated requests reach them
        assert {(op.method.upper(), op.path) for op in operations} >= SURFACE_OPERATIONS
        statuses: list[int] = []
        for operation in operations:
            if (operation.method.upper(), operation.path) in ENDLESS:
                continue

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def check(case: Any) -> None:
                response = case.call(base_url=url, timeout=60)
                statuses.append(response.status_code)
                assert response.status_code < 500, (case.method, case.path, response.text[:500])
                if response.status_code >= 400:
                    assert_envelope(case.path, response.json())

            check()
        # Generated requests really ran, and some of them were served successfully.
        assert len(statuses) >= 3 * len(operations)
        assert 200 in statuses


def assert_envelope(path: str, body: Any) -> None:
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}
    elif path.startswith("/api/"):
        assert set(body) == {"error"} and isinstance(body["error"], str)
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
