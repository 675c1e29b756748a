"""The dashboard's server side against a real daemon on loopback: the activity ring
(`GET /admin/activity`), the live feed (`GET /admin/events`, read with httpx streaming), the
API-key guard, `ui: false`, a subscriber that stops reading, and streams ending on drain."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon, spawned_daemon, wait_until, watched_daemon

from mlxrouter.activity import Activity
from mlxrouter.api.access import surface_of

Event = tuple[str, dict[str, Any]]


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """The stream's events, once its opening comment says the subscription exists (headers
    come first: what happens before that comment is not seen)."""
    lines = response.iter_lines()
    assert next(lines) == ": mlxrouter events"
    events = _events(lines)
    name, data = next(events)  # and a heartbeat, for readers that never see comments
    assert (name, data["dropped"]) == ("heartbeat", 0)
    return events


def _events(lines: Iterator[str]) -> Iterator[Event]:
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def first(events: Iterator[Event], wanted: Callable[[Event], bool]) -> Event:
    # Heartbeats keep a stream alive past any read timeout: a deadline ends a wait that
    # would otherwise never end (a hang guard, not a timing assert).
    deadline = time.monotonic() + 120
    for event in events:
        if wanted(event):
            return event
        if time.monotonic() > deadline:
            break
    raise AssertionError("the event did not come")


def config(models: Path, extra: str = "") -> str:
    return f"hf_cache: false\nmodel_dirs: [{models}]\n{extra}"


def test_an_sdk_request_shows_in_the_ring_and_as_a_finished_event(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
        http.stream("GET", "/admin/events") as stream,
        openai.OpenAI(base_url=url + "/v1", api_key="none") as client,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse_events(stream)
        client.chat.completions.create(
            model="tiny-a", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        _, started = first(events, lambda e: e[0] == "request.started")
        _, done = first(events, lambda e: e[0] == "request.finished")
        assert started["id"] == done["id"]
        assert started["model"] == done["model"] == "tiny-a"
        assert done["surface"] == "openai"
        assert done["status"] == 200
        assert done["prompt_tokens"] > 0
        assert done["completion_tokens"] == 3
        assert done["ttft"] is not None
        assert done["prompt"] is None  # log_prompts is off
        ring = http.get("/admin/activity").json()
        assert [r["id"] for r in ring["requests"]] == [done["id"]]
        assert ring["requests"][0] == done


def test_each_surface_is_named_and_a_failure_keeps_its_message(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models, "log_prompts: true\n")) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        chat = [{"role": "user", "content": "Hi"}]
        http.post("/v1/messages", json={"model": "tiny-a", "messages": chat, "max_tokens": 2})
        http.post("/api/chat", json={"model": "tiny-a", "messages": chat, "stream": False})
        http.post("/v1/responses", json={"model": "tiny-a", "input": "Hi", "max_output_tokens": 2})
        missing = http.post("/v1/chat/completions", json={"model": "nope", "messages": chat})
        assert missing.status_code == 404
        records = http.get("/admin/activity").json()["requests"]
        assert [r["surface"] for r in records] == ["anthropic", "ollama", "responses", "openai"]
        assert "Hi" in records[0]["prompt"]  # log_prompts is on
        assert records[-1]["status"] == 404
        assert "nope" in records[-1]["error"]


def test_the_ring_keeps_ui_history_requests(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models, "ui: {history: 2}\n")) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        for _ in range(3):
            http.post("/v1/completions", json={"model": "tiny-a", "prompt": "Hi", "max_tokens": 1})
        answer = http.get("/admin/activity").json()
        ids = [r["id"] for r in answer["requests"]]
        assert len(ids) == 2
        assert ids == sorted(ids)
        assert answer["history"] == 2  # a dashboard keeps as many rows


def test_ui_history_and_ui_follow_live_edits(tiny_models: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config(tiny_models, "ui: {history: 3}\n"))
    with (
        watched_daemon(config_file) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):

        def ring() -> list[dict[str, Any]]:
            answer = http.get("/admin/activity")
            return list(answer.json()["requests"]) if answer.status_code == 200 else []

        for _ in range(3):
            http.post("/v1/completions", json={"model": "tiny-a", "prompt": "Hi", "max_tokens": 1})
        assert len(ring()) == 3
        config_file.write_text(config(tiny_models, "ui: {history: 1}\n"))
        wait_until(lambda: len(ring()) == 1, timeout=30, what="the ring to shrink")
        config_file.write_text(config(tiny_models, "ui: false\n"))
        wait_until(
            lambda: http.get("/admin/activity").status_code == 404, timeout=30, what="ui off"
        )


def test_admin_load_and_unload_emit_pool_events(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
        http.stream("GET", "/admin/events") as stream,
    ):
        events = sse_events(stream)
        assert http.post("/admin/load", json={"model": "tiny-b"}).status_code == 200
        pool = [first(events, lambda e: e[0] == "pool")[1] for _ in range(4)]
        assert [(e["id"], e["state"]) for e in pool] == [
            ("tiny-b", "loading"),
            ("tiny-b", "loaded"),
            ("tiny-b", "serving"),
            ("tiny-b", "idle"),
        ]
        assert http.post("/admin/unload", json={"model": "tiny-b"}).status_code == 200
        _, unloaded = first(events, lambda e: e[0] == "pool")
        assert (unloaded["id"], unloaded["state"], unloaded["in_flight"]) == (
            "tiny-b",
            "unloaded",
            0,
        )
        # Pinning and unpinning change the entry's lifetime: each is a pool event too.
        assert http.post("/admin/load", json={"model": "tiny-b", "pin": True}).status_code == 200
        pool = [first(events, lambda e: e[0] == "pool")[1] for _ in range(4)]
        assert (pool[-1]["id"], pool[-1]["state"]) == ("tiny-b", "idle")
        assert http.post("/admin/load", json={"model": "tiny-b", "pin": False}).status_code == 200
        # the load itself (already loaded: a lease's serving and idle), then the unpin
        pool = [first(events, lambda e: e[0] == "pool")[1] for _ in range(3)]
        assert [(e["id"], e["state"]) for e in pool] == [
            ("tiny-b", "serving"),
            ("tiny-b", "idle"),
            ("tiny-b", "idle"),
        ]


def test_log_lines_arrive_as_log_events(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
        http.stream("GET", "/admin/events") as stream,
    ):
        events = sse_events(stream)
        # Logged from this thread, not the daemon's loop: it reaches the loop by itself.
        logging.getLogger("mlxrouter.test").warning("a line for the dashboard %d", 7)
        _, line = first(events, lambda e: e[0] == "log")
        assert line["message"] == "a line for the dashboard 7"
        assert line["level"] == "warning"
        assert line["logger"] == "mlxrouter.test"
        assert line["model"] is None  # about no model in particular


def test_an_access_log_line_names_its_model_in_a_field(tiny_models: Path) -> None:
    access = logging.getLogger("mlxrouter.access")
    saved = access.level
    access.setLevel(logging.INFO)  # the daemon runs in this process; its access lines are info
    try:
        with (
            running_daemon(config(tiny_models)) as (url, _),
            httpx.Client(base_url=url, timeout=60) as http,
            http.stream("GET", "/admin/events") as stream,
        ):
            events = sse_events(stream)
            body = {"model": "tiny-a", "prompt": "Hi", "max_tokens": 1}
            assert http.post("/v1/completions", json=body).status_code == 200
            _, line = first(
                events, lambda e: e[0] == "log" and e[1]["logger"] == "mlxrouter.access"
            )
            assert line["model"] == "tiny-a"
            assert "status=200" in line["message"]
    finally:
        access.setLevel(saved)


def test_the_api_key_guards_both_routes(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models, "api_key: sesame\n")) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        for path in ("/admin/activity", "/admin/events"):
            refused = http.get(path)
            assert refused.status_code == 401
            assert refused.json()["error"]["type"] == "authentication_error"
        allowed = http.get("/admin/activity", headers={"Authorization": "Bearer sesame"})
        assert allowed.status_code == 200
        with http.stream("GET", "/admin/events", headers={"x-api-key": "sesame"}) as stream:
            assert stream.status_code == 200


def test_ui_false_turns_the_routes_off(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models, "ui: false\n")) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        for path in ("/admin/activity", "/admin/events"):
            answer = http.get(path)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "not_found"
            assert path in answer.json()["error"]["message"]
        assert http.get("/admin/pool").status_code == 200  # the rest of admin is still there


async def test_a_subscriber_that_falls_behind_loses_counted_events() -> None:
    activity = Activity(history=10, queue_size=8)
    slow = activity.subscribe()
    for n in range(100):
        activity.publish("log", {"n": n})
    assert slow.dropped == 92
    assert activity.answer().dropped_events == 92
    received = [await slow.next(1.0) for _ in range(8)]
    assert [json.loads(e.data)["n"] for e in received if e is not None] == list(range(8))
    activity.close()
    assert await slow.next(1.0) is None  # the end mark gets in even though it was full
    activity.unsubscribe(slow)
    assert activity.subscribers == 0
    assert activity.dropped == 92


def test_a_client_that_stops_reading_is_bounded_and_let_go(tiny_models: Path) -> None:
    """A browser that stops reading: the kernel buffers fill, then its queue, then events are
    dropped and counted; when it goes, its subscription goes with it."""
    with (
        running_daemon(config(tiny_models)) as (url, app),
        httpx.Client(base_url=url, timeout=60) as http,
        socket.socket() as sock,
    ):
        activity = app.state.daemon.activity
        host, port = url.removeprefix("http://").split(":")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"GET /admin/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_until(lambda: activity.subscribers == 1, what="the subscription")
        log = logging.getLogger("mlxrouter.test")
        for n in range(3000):  # about 3 MB of events, far past every buffer on the way
            log.warning("line %d %s", n, "x" * 1000)
        wait_until(lambda: activity.dropped > 0, what="dropped events")
        assert http.get("/admin/activity").json()["dropped_events"] > 0
        sock.close()
        wait_until(lambda: activity.subscribers == 0, timeout=30, what="the subscription to end")


def test_a_drain_ends_the_event_streams(tiny_models: Path, tmp_path: Path) -> None:
    """SIGTERM: the stream ends at once (uvicorn waits for open connections), the daemon exits."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config(tiny_models))
    with (
        spawned_daemon(["--config", str(config_file)], log=tmp_path / "log") as (url, process),
        httpx.Client(base_url=url, timeout=60) as http,
        http.stream("GET", "/admin/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith(":")  # subscribed
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 120  # a hang guard: heartbeats keep reads alive
        for _ in lines:  # heartbeats or log lines, until the daemon ends the stream
            assert time.monotonic() < deadline, "the stream did not end on drain"
        assert process.wait(60) == 0
    assert "draining" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("path", ["/admin/activity", "/admin/events"])
def test_routes_are_in_the_schema(tiny_models: Path, path: str) -> None:
    with running_daemon(config(tiny_models)) as (url, _):
        schema = httpx.get(url + "/schema/openapi.json", timeout=60).json()
        assert "get" in schema["paths"][path]


def test_a_streamed_answer_is_recorded_with_its_tokens(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
        openai.OpenAI(base_url=url + "/v1", api_key="none") as client,
    ):
        stream = client.chat.completions.create(
            model="tiny-b",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
        wait_until(lambda: bool(http.get("/admin/activity").json()["requests"]), what="a record")
        (record,) = http.get("/admin/activity").json()["requests"]
        assert (record["surface"], record["kind"], record["status"]) == ("openai", "chat", 200)
        assert record["completion_tokens"] == usage.completion_tokens == 4
        assert record["prompt_tokens"] == usage.prompt_tokens
        assert record["tokens_per_second"] > 0


@pytest.mark.parametrize(
    ("kind", "surface"),
    [
        ("chat", "openai"),
        ("text", "openai"),
        ("embeddings", "embeddings"),
        ("responses", "responses"),
        ("messages", "anthropic"),
        ("ollama-chat", "ollama"),
        ("ollama-embed", "ollama"),
    ],
)
def test_each_kind_names_its_surface(kind: str, surface: str) -> None:
    assert surface_of(kind) == surface
