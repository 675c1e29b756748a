"""Pool visibility and control over HTTP and the CLI, a full pool's 503, keep_alive, and
adapters requested per call — against a real daemon on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon
from tinymodel import make_tiny_adapter, make_tiny_model, train_tiny_adapter

from mlxrouter.cli import main as cli_main

CHAT = [{"role": "user", "content": "Hi"}]
QUESTION = "Where shall we meet?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("admin-models")
    # A long context, so a request can stream long enough to hold its model busy.
    for seed, name in enumerate(("tiny-a", "tiny-b"), start=1):
        make_tiny_model(root / name, seed=seed, context=8192)
    make_tiny_adapter(root / "tiny-a-pirate", root / "tiny-a", base_ref="tiny-a", seed=3)
    # Two adapters really trained (LoRA, Adam) to change one answer of the base.
    for name, target in (("tiny-a-fox", "The fox"), ("tiny-a-capital", "capital")):
        train_tiny_adapter(
            root / name, root / "tiny-a", base_ref="tiny-a", prompt=QUESTION, target=target
        )
    return root


@pytest.fixture
def daemon(model_dir: Path) -> Iterator[tuple[str, Any]]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{model_dir}]\npool: {{max_models: 2, queue_timeout: 0.5}}\n"
    )
    with running_daemon(config) as served:
        yield served


@pytest.fixture
def http(daemon: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon[0], timeout=60) as client:
        yield client


def chat(http: httpx.Client, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": CHAT, "max_tokens": 3, "temperature": 0, **extra}
    return http.post("/v1/chat/completions", json=body)


def pool_ids(http: httpx.Client) -> set[str]:
    return {e["id"] for e in http.get("/admin/pool").json()["entries"]}


def test_models_list_shows_adapters_and_loaded_state(http: httpx.Client) -> None:
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert cards["tiny-a-pirate"]["kind"] == "adapter"
    assert cards["tiny-a-pirate"]["base"] == "tiny-a"
    assert cards["tiny-a"]["loaded"] is False
    assert chat(http, "tiny-a").status_code == 200
    assert http.get("/v1/models/tiny-a").json()["loaded"] is True


def test_adapter_by_id_or_by_field_shares_one_entry(http: httpx.Client) -> None:
    base = chat(http, "tiny-a").json()["choices"][0]["message"]["content"]
    by_id = chat(http, "tiny-a-pirate").json()
    by_field = chat(http, "tiny-a", adapters="tiny-a-pirate").json()
    assert by_id["model"] == "tiny-a-pirate"
    assert by_id["choices"][0]["message"]["content"] == by_field["choices"][0]["message"]["content"]
    assert by_id["choices"][0]["message"]["content"] != base
    status = http.get("/admin/pool").json()
    assert status["loads"] == 2
    adapter = next(e for e in status["entries"] if e["id"] == "tiny-a-pirate")
    assert adapter["kind"] == "adapter" and adapter["base"] == "tiny-a"
    wrong = chat(http, "tiny-b", adapters="tiny-a-pirate")
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "adapters"


def test_admin_load_and_unload(http: httpx.Client) -> None:
    response = http.post("/admin/load", json={"model": "tiny-b"})
    assert response.status_code == 200
    assert "tiny-b" in pool_ids(http)
    entry = next(e for e in http.get("/admin/pool").json()["entries"] if e["id"] == "tiny-b")
    assert entry["bytes"] > 0 and entry["in_flight"] == 0 and entry["state"] == "loaded"
    assert http.post("/admin/unload", json={"model": "tiny-b"}).json()["unloaded"] is True
    assert "tiny-b" not in pool_ids(http)
    assert http.post("/admin/unload", json={"model": "tiny-b"}).json()["unloaded"] is False
    missing = http.post("/admin/load", json={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_keep_alive_zero_unloads_and_minus_one_pins(http: httpx.Client) -> None:
    assert chat(http, "tiny-b", keep_alive=0).status_code == 200
    assert "tiny-b" not in pool_ids(http)
    assert chat(http, "tiny-b", keep_alive=-1).status_code == 200
    entry = next(e for e in http.get("/admin/pool").json()["entries"] if e["id"] == "tiny-b")
    assert entry["pinned"] is True
    assert chat(http, "tiny-b", keep_alive="5m").status_code == 200
    entry = next(e for e in http.get("/admin/pool").json()["entries"] if e["id"] == "tiny-b")
    assert entry["pinned"] is False and entry["expires_at"] is not None
    bad = chat(http, "tiny-b", keep_alive="soon")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"


def test_full_pool_of_busy_models_answers_503_with_retry_after(
    daemon: tuple[str, Any], http: httpx.Client
) -> None:
    url, _ = daemon
    started = threading.Event()
    release = threading.Event()

    def hold(model: str) -> None:
        # logit_bias keeps the random model off its end-of-sequence token (id 2).
        body = {
            "model": model,
            "prompt": "Hello",
            "max_tokens": 8000,
            "stream": True,
            "logit_bias": {"2": -100},
        }
        with (
            httpx.Client(base_url=url, timeout=60) as client,
            client.stream("POST", "/v1/completions", json=body) as r,
        ):
            lines = r.iter_lines()
            next(lines)
            started.set()
            release.wait(30)

    holders = [threading.Thread(target=hold, args=(m,)) for m in ("tiny-a", "tiny-b")]
    for holder in holders:
        started.clear()
        holder.start()
        assert started.wait(30)
    try:
        response = chat(http, "tiny-a-pirate")
        assert response.status_code == 503
        assert response.headers["retry-after"].isdigit()
        assert response.json()["error"]["code"] == "pool_busy"
        busy = http.post("/admin/unload", json={"model": "tiny-a"})
        assert busy.status_code == 409
    finally:
        release.set()
        for holder in holders:
            holder.join(30)
    assert chat(http, "tiny-a-pirate").status_code == 200


def test_cli_ps_load_unload(daemon: tuple[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = daemon
    assert cli_main(["load", "tiny-b", "--url", url]) == 0
    assert cli_main(["ps", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "tiny-b" in out and "loaded" in out
    assert cli_main(["unload", "tiny-b", "--url", url]) == 0
    assert "unloaded tiny-b" in capsys.readouterr().out
    assert cli_main(["load", "nope", "--url", url]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_trained_adapters_change_the_answer_without_reloading_the_base(model_dir: Path) -> None:
    config = f"hf_cache: false\nmodel_dirs: [{model_dir}]\npool: {{max_models: 3}}\n"
    with running_daemon(config) as (url, _):
        _check_trained_adapters(url)


def _check_trained_adapters(url: str) -> None:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:

        def ask(model: str) -> str:
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": QUESTION}],
                max_tokens=8,
                temperature=0,
            )
            return reply.choices[0].message.content or ""

        base = ask("tiny-a")
        assert base not in ("The fox", "capital")
        for _ in range(2):  # switch back and forth
            assert ask("tiny-a-fox") == "The fox"
            assert ask("tiny-a-capital") == "capital"
            assert ask("tiny-a") == base
        status = httpx.get(url + "/admin/pool").json()
        assert status["loads"] == 3  # the base once, each adapter once: no reloads on switching
        sizes = {e["id"]: e["bytes"] for e in status["entries"]}
        assert sizes["tiny-a-fox"] < sizes["tiny-a"] and sizes["tiny-a-capital"] < sizes["tiny-a"]
