"""What the dashboard's tabs read from the API, over HTTP against a real daemon on loopback:
pinning through `POST /admin/load`, the machine's memory in `/admin/pool`, and where each
model was found in `/v1/models`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import msgspec
from conftest import running_daemon

from mlxrouter.status import PoolStatus

CHAT = [{"role": "user", "content": "Hi"}]


def config(models: Path, extra: str = "") -> str:
    return f"hf_cache: false\nmodel_dirs: [{models}]\n{extra}"


def entry(http: httpx.Client, model: str) -> dict[str, object]:
    return next(e for e in http.get("/admin/pool").json()["entries"] if e["id"] == model)


def test_a_pinned_model_stays_loaded_until_it_is_unpinned(tiny_models: Path) -> None:
    # One model at a time, and an idle ttl: pinning is what keeps tiny-a in.
    yaml = config(tiny_models, "pool: {max_models: 1, queue_timeout: 0.5, idle_ttl: 1h}\n")
    with running_daemon(yaml) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        pinned = http.post("/admin/load", json={"model": "tiny-a", "pin": True})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["pool"]["entries"][0]["pinned"] is True  # loaded and pinned
        assert entry(http, "tiny-a")["expires_at"] is None
        other = {"model": "tiny-b", "messages": CHAT, "max_tokens": 2}
        full = http.post("/v1/chat/completions", json=other)
        assert full.status_code == 503  # tiny-a may not be evicted for it
        assert entry(http, "tiny-a")["pinned"] is True

        unpinned = http.post("/admin/load", json={"model": "tiny-a", "pin": False})
        assert unpinned.status_code == 200
        after = entry(http, "tiny-a")
        assert after["pinned"] is False
        assert after["expires_at"] is not None  # its lifetime (the idle ttl) is back
        assert http.post("/v1/chat/completions", json=other).status_code == 200
        assert [e["id"] for e in http.get("/admin/pool").json()["entries"]] == ["tiny-b"]


def test_loading_without_pin_leaves_a_pin_as_it_is(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        assert http.post("/admin/load", json={"model": "tiny-a", "pin": True}).status_code == 200
        assert http.post("/admin/load", json={"model": "tiny-a"}).status_code == 200
        assert entry(http, "tiny-a")["pinned"] is True
        # A pinned entry is unloaded when asked.
        assert http.post("/admin/unload", json={"model": "tiny-a"}).json()["unloaded"] is True
        bad = http.post("/admin/load", json={"model": "tiny-a", "pin": "yes"})
        assert bad.status_code == 400
        # Unload takes no pin.
        assert http.post("/admin/unload", json={"model": "tiny-a", "pin": True}).status_code == 400


def test_the_pool_reports_the_machines_memory(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        status = http.get("/admin/pool").json()
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert status["machine_memory_bytes"] == machine > 0
    # An older daemon's answer, without the field, still decodes.
    del status["machine_memory_bytes"]
    assert msgspec.convert(status, PoolStatus).machine_memory_bytes is None


def test_models_say_where_they_were_found(tiny_models: Path, tmp_path: Path) -> None:
    # A folder `mlxrouter import-gguf` converted carries a mark in its config.json.
    converted = tmp_path / "converted"
    shutil.copytree(tiny_models / "tiny-a", converted)
    marked = {**json.loads((converted / "config.json").read_text())}
    marked["mlxrouter_converted_from"] = "gguf"
    (converted / "config.json").write_text(json.dumps(marked))
    yaml = config(
        tiny_models,
        f"models:\n  named: {{path: {tiny_models / 'tiny-b'}}}\n"
        f"  from-gguf: {{path: {converted}}}\n"
        "  short: {model: tiny-a}\n",
    )
    with (
        running_daemon(yaml) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
        assert cards["tiny-a"]["source"] == "model_dir"
        assert cards["named"]["source"] == "config"
        assert cards["tiny-a"]["distributed"] is False
        assert cards["tiny-a"]["converted_from"] is None
        assert cards["from-gguf"]["converted_from"] == "gguf"
        assert cards["from-gguf"]["source"] == "config"
        # An alias names the id the pool lists it under; other cards are no alias.
        assert cards["short"]["alias_of"] == "tiny-a"
        assert cards["tiny-a"]["alias_of"] is None
        assert http.get("/v1/models/named").json()["source"] == "config"
