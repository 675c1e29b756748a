"""The hot-swap registry: pure filter and diff, then real files, the real watcher and a real
daemon on loopback."""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import serve_app, spawned_daemon, wait_until, watched_daemon
from tinymodel import make_tiny_model
from watchfiles import Change

from mlxrouter.config import Config, parse_config
from mlxrouter.registry import build_registry, diff_registries
from mlxrouter.watcher import WatchSet, is_relevant, watch_roots

# ---- pure parts -------------------------------------------------------------------------------


def test_filter_keeps_config_and_model_files_and_drops_noise(tmp_path: Path) -> None:
    watch = WatchSet(tmp_path / "cfg" / "config.yaml", (tmp_path / "models",), tmp_path / "hub")

    def relevant(path: Path) -> bool:
        return is_relevant(watch, Change.modified, str(path))

    assert relevant(tmp_path / "cfg" / "config.yaml")
    assert not relevant(tmp_path / "cfg" / ".config.yaml.swp")
    assert not relevant(tmp_path / "cfg" / "other.yaml")
    assert relevant(tmp_path / "models" / "m" / "model.safetensors")
    assert relevant(tmp_path / "models")
    assert not relevant(tmp_path / "models" / ".m.1234.partial" / "model.safetensors")
    assert not relevant(tmp_path / "models" / "m" / "model.safetensors.tmp")
    assert relevant(tmp_path / "hub" / "models--a--b" / "snapshots" / "x" / "config.json")
    assert not relevant(tmp_path / "hub" / "models--a--b" / "blobs" / "123.incomplete")
    assert not relevant(tmp_path / "hub" / ".locks" / "models--a--b" / "x.lock")
    assert not relevant(tmp_path / "elsewhere" / "file")
    assert relevant(tmp_path)  # a parent of a source that may appear


def test_config_file_created_replaced_or_deleted_is_relevant(tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "config.yaml"
    watch = WatchSet(config, (), None)
    for change in (Change.added, Change.modified, Change.deleted):
        assert is_relevant(watch, change, str(config))
    # An editor's temp file is not the config; its rename onto the config is.
    assert not is_relevant(watch, Change.added, str(config.with_name(".config.yaml.tmp")))
    assert not is_relevant(watch, Change.added, str(config.with_name("config.yaml.bak")))
    # The folder is watched whether the file exists or not.
    (tmp_path / "cfg").mkdir()
    assert watch_roots(watch) == [tmp_path / "cfg"]


def test_roots_are_existing_and_not_nested(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "models" / "inner").mkdir(parents=True)
    watch = WatchSet(
        tmp_path / "cfg" / "config.yaml",
        (tmp_path / "models", tmp_path / "models" / "inner", tmp_path / "absent" / "deep"),
        None,
    )
    # The absent folder is watched through its nearest existing parent, which holds the rest.
    assert watch_roots(watch) == [tmp_path]
    without_absent = WatchSet(watch.config_file, watch.model_dirs[:2], None)
    assert watch_roots(without_absent) == [tmp_path / "cfg", tmp_path / "models"]


def test_diff_of_two_snapshots(tmp_path: Path, tiny_models: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-a", models / "keep")
    shutil.copytree(tiny_models / "tiny-a", models / "change")
    shutil.copytree(tiny_models / "tiny-a", models / "gone")
    config = parse_config(f"hf_cache: false\nmodel_dirs: [{models}]")
    before = build_registry(config)
    shutil.rmtree(models / "gone")
    shutil.copytree(tiny_models / "tiny-b", models / "new")
    shutil.copy(
        tiny_models / "tiny-b" / "model.safetensors", models / "change" / "model.safetensors"
    )
    diff = diff_registries(before, build_registry(config))
    assert diff.added == ("new",)
    assert diff.removed == ("gone",)
    assert diff.changed == ("change",)
    assert not diff_registries(before, before)


# ---- a real daemon watching real files -------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    models = tmp_path / "models"
    models.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"hf_cache: false\nmodel_dirs: [{models}]\npool: {{max_models: 2}}\n")
    return config, models


@pytest.fixture
def daemon(setup: tuple[Path, Path]) -> Iterator[tuple[str, Any]]:
    with watched_daemon(setup[0]) as served:
        yield served


def ids(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}


def answer(url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "Hello", "max_tokens": 6, "temperature": 0}
    return httpx.post(url + "/v1/completions", json=body, timeout=60)


def test_model_copied_in_is_listed(
    daemon: tuple[str, Any], setup: tuple[Path, Path], tiny_models: Path
) -> None:
    url, _ = daemon
    assert ids(url) == set()
    shutil.copytree(tiny_models / "tiny-a", setup[1] / "fresh")
    wait_until(lambda: "fresh" in ids(url), what="the new model to be listed")
    assert answer(url, "fresh").status_code == 200


def test_removed_model_finishes_its_stream_then_404(
    daemon: tuple[str, Any], setup: tuple[Path, Path], tmp_path: Path
) -> None:
    url, app = daemon
    make_tiny_model(setup[1] / "doomed", seed=4, context=8192)
    wait_until(lambda: "doomed" in ids(url), what="the model to be listed")
    result: dict[str, Any] = {}
    first_chunk = threading.Event()

    def stream() -> None:
        body = {
            "model": "doomed",
            "prompt": "Hi",
            "max_tokens": 3000,
            "stream": True,
            "logit_bias": {"2": -100},
        }
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
            lines = []
            for line in response.iter_lines():
                lines.append(line)
                first_chunk.set()
            result["lines"] = lines

    thread = threading.Thread(target=stream)
    thread.start()
    assert first_chunk.wait(30)
    shutil.rmtree(setup[1] / "doomed")
    wait_until(lambda: "doomed" not in ids(url), what="the model to be gone")
    thread.join(120)
    assert "data: [DONE]" in result["lines"]
    assert '"finish_reason":"length"' in "".join(result["lines"])
    gone = answer(url, "doomed")
    assert gone.status_code == 404
    wait_until(
        lambda: not app.state.daemon.pool.is_loaded("doomed"), what="the entry to be unloaded"
    )


def test_replaced_weights_are_reloaded_on_next_use(
    daemon: tuple[str, Any], setup: tuple[Path, Path], tmp_path: Path
) -> None:
    url, app = daemon
    folder = make_tiny_model(setup[1] / "swap", seed=1)
    wait_until(lambda: "swap" in ids(url))
    before = answer(url, "swap").json()["choices"][0]["text"]
    other = make_tiny_model(tmp_path / "other", seed=9)
    rebuilds = app.state.daemon.rebuilds
    # Replace in place the way a converter does: write aside, then rename over.
    shutil.copy(other / "model.safetensors", folder / ".model.safetensors.new")
    (folder / ".model.safetensors.new").replace(folder / "model.safetensors")
    wait_until(lambda: app.state.daemon.rebuilds > rebuilds, what="a rebuild")
    wait_until(lambda: not app.state.daemon.pool.is_loaded("swap"), what="the stale entry to go")
    after = answer(url, "swap").json()["choices"][0]["text"]
    from mlx_lm import generate, load

    model, tokenizer = load(str(other))
    assert after == generate(model, tokenizer, "Hello", max_tokens=6)
    assert after != before


def test_invalid_config_keeps_serving_and_health_says_why(
    daemon: tuple[str, Any], setup: tuple[Path, Path], tiny_models: Path
) -> None:
    url, _app = daemon
    config, models = setup
    shutil.copytree(tiny_models / "tiny-a", models / "stay")
    wait_until(lambda: "stay" in ids(url))
    config.write_text("hf_cache: false\nmodel_dirs: [\n")
    wait_until(lambda: httpx.get(url + "/health").status_code == 503, what="degraded health")
    health = httpx.get(url + "/health").json()
    assert health["status"] == "degraded"
    assert any("config.yaml, line" in reason for reason in health["reasons"])
    assert str(config.parent) not in str(health)  # no folder paths to unauthenticated callers
    assert "stay" in ids(url)
    assert answer(url, "stay").status_code == 200
    config.write_text(
        f"hf_cache: false\nmodel_dirs: [{models}]\nmodels:\n  alias: {{model: stay}}\n"
    )
    wait_until(lambda: httpx.get(url + "/health").status_code == 200, what="health to recover")
    assert "alias" in ids(url)


def test_slow_copy_is_not_served_early(
    daemon: tuple[str, Any], setup: tuple[Path, Path], tiny_models: Path
) -> None:
    url, _ = daemon
    source = tiny_models / "tiny-b"
    target = setup[1] / "slow"
    target.mkdir()
    for file in source.iterdir():
        if file.name != "model.safetensors":
            shutil.copy(file, target / file.name)
    data = (source / "model.safetensors").read_bytes()
    step = len(data) // 5
    with (target / "model.safetensors").open("wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start : start + step])
            out.flush()
            time.sleep(0.8)  # long enough for the watcher to rebuild mid-copy
            if start + step < len(data):
                assert "slow" not in ids(url)
    wait_until(lambda: "slow" in ids(url), what="the copied model to be listed")


def test_rapid_editor_saves_cause_one_rebuild(
    daemon: tuple[str, Any], setup: tuple[Path, Path]
) -> None:
    _url, app = daemon
    config, models = setup
    time.sleep(1.0)  # let start-up settle
    rebuilds = app.state.daemon.rebuilds
    for n in range(3):
        temp = config.with_name(f".config.yaml.{n}.tmp")
        temp.write_text(f"hf_cache: false\nmodel_dirs: [{models}]\npool: {{max_models: {n + 1}}}\n")
        temp.replace(config)
    wait_until(lambda: app.state.daemon.rebuilds > rebuilds, what="a rebuild")
    time.sleep(1.5)
    assert app.state.daemon.rebuilds == rebuilds + 1
    assert app.state.daemon.pool.limits.max_models == 3


def test_lower_max_models_evicts_idle_entries(
    daemon: tuple[str, Any], setup: tuple[Path, Path], tiny_models: Path
) -> None:
    url, app = daemon
    config, models = setup
    for name in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny_models / name, models / name)
    wait_until(lambda: {"tiny-a", "tiny-b"} <= ids(url))
    assert answer(url, "tiny-a").status_code == 200
    assert answer(url, "tiny-b").status_code == 200
    assert len(app.state.daemon.pool.entries()) == 2
    config.write_text(f"hf_cache: false\nmodel_dirs: [{models}]\npool: {{max_models: 1}}\n")
    wait_until(lambda: len(app.state.daemon.pool.entries()) == 1, what="an eviction")


# ---- a config file that comes and goes while the daemon runs ---------------------------------

# Generous: the tests wait for a state, never for a fixed time.
DEADLINE_S = 30.0


@contextlib.contextmanager
def daemon_without_config(config_file: Path) -> Iterator[tuple[str, Any]]:
    """A daemon started the way `mlxrouter serve` starts without a config file: the defaults,
    with the path where the file would be."""
    from mlxrouter.api import create_app

    app = create_app(Config(), config_path=config_file)
    with serve_app(app) as url:
        yield url, app


def status(url: str, path: str, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url + path, headers=headers).status_code


def write_atomically(path: Path, text: str) -> None:
    """Write aside, then rename over, as editors and config tools do."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.replace(path)  # os.replace: atomic


@pytest.fixture
def late_config(tmp_path: Path) -> Path:
    # Neither the file nor its folder exists when the daemon starts.
    return tmp_path / "cfg" / "config.yaml"


def test_config_created_after_start_is_enforced(late_config: Path) -> None:
    with daemon_without_config(late_config) as (url, _app):
        assert late_config.parent.is_dir()  # created, so it can be watched
        assert status(url, "/v1/models") == 200
        late_config.write_text("hf_cache: false\napi_key: secret\n")
        wait_until(lambda: status(url, "/v1/models") == 401, DEADLINE_S, "the new api_key to apply")
        assert status(url, "/v1/models", key="wrong") == 401
        assert status(url, "/v1/models", key="secret") == 200
        assert status(url, "/health") == 200


def test_broken_config_replacing_a_late_one_keeps_it_and_degrades(late_config: Path) -> None:
    with daemon_without_config(late_config) as (url, app):
        write_atomically(late_config, "hf_cache: false\napi_key: secret\npool: {max_models: 3}\n")
        wait_until(lambda: status(url, "/v1/models") == 401, DEADLINE_S, "the config to apply")
        write_atomically(late_config, "hf_cache: false\napi_key: [\n")
        wait_until(lambda: status(url, "/health") == 503, DEADLINE_S, "degraded health")
        health = httpx.get(url + "/health").json()
        assert health["status"] == "degraded"
        assert any("config.yaml, line" in reason for reason in health["reasons"])
        # The last good config still holds: the key, and the pool limit.
        assert status(url, "/v1/models") == 401
        assert status(url, "/v1/models", key="secret") == 200
        assert app.state.daemon.pool.limits.max_models == 3


def test_deleted_config_goes_back_to_the_defaults(
    late_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mlxrouter.daemon")
    with daemon_without_config(late_config) as (url, app):
        write_atomically(late_config, "hf_cache: false\napi_key: secret\npool: {max_models: 3}\n")
        wait_until(lambda: status(url, "/v1/models") == 401, DEADLINE_S, "the config to apply")
        late_config.unlink()
        wait_until(lambda: status(url, "/v1/models") == 200, DEADLINE_S, "the key to be dropped")
        assert status(url, "/health") == 200
        assert app.state.daemon.config == Config()
        assert app.state.daemon.pool.limits.max_models == Config().pool.max_models

        def said_gone() -> bool:
            return any(
                "is gone: back to the built-in defaults" in r.getMessage()
                and str(late_config) in r.getMessage()
                and r.levelno == logging.WARNING
                for r in caplog.records
            )

        wait_until(said_gone, DEADLINE_S, "the log line")


def test_deleted_config_keeps_the_command_line_overrides(late_config: Path) -> None:
    from mlxrouter.api import create_app

    late_config.parent.mkdir()
    late_config.write_text("default_model: from-file\n")
    app = create_app(
        Config(default_model="from-file", port=9999),
        config_path=late_config,
        overrides={"port": 9999},
    )
    with serve_app(app) as url:
        daemon = app.state.daemon
        late_config.unlink()
        wait_until(lambda: daemon.config.default_model is None, DEADLINE_S, "the defaults")
        assert daemon.config.port == 9999
        assert status(url, "/health") == 200


def test_serve_without_a_config_file_applies_one_created_later(
    tiny_models: Path, tmp_path: Path
) -> None:
    """The README's service recipe: `mlxrouter serve` started with no config file, then the
    file copied into place. Its `api_key` is enforced without a restart."""
    config_dir = tmp_path / "cfg"  # not there yet either: serve creates it to watch it
    env = {"MLXROUTER_CONFIG_DIR": str(config_dir), "MLXROUTER_LOG_DIR": str(tmp_path / "logs")}
    with spawned_daemon(["--no-demo"], log=tmp_path / "serve.log", env=env) as (url, _):
        assert httpx.get(url + "/v1/models").status_code == 200
        wait_until(config_dir.exists, what="the config folder to be made")
        draft = config_dir / "draft.yaml"
        draft.write_text(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\napi_key: secret\n")
        draft.replace(config_dir / "config.yaml")
        wait_until(
            lambda: httpx.get(url + "/v1/models").status_code == 401,
            timeout=30,
            what="the new config's api_key to be enforced",
        )
        listed = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer secret"})
        assert {m["id"] for m in listed.json()["data"]} >= {"tiny-a", "tiny-b"}


def test_prompt_cache_size_follows_a_live_edit(tiny_models: Path, tmp_path: Path) -> None:
    """`pool.prompt_cache_bytes` edited live reaches the engine: the loaded model's cache is
    emptied at 0, and follow-up turns stop reusing their prefix."""
    config = tmp_path / "config.yaml"
    config.write_text(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n")
    body = {"model": "tiny-a", "prompt": "The quick brown fox jumps", "max_tokens": 2}
    with watched_daemon(config) as (url, app), httpx.Client(base_url=url, timeout=60) as http:

        def cached() -> int:
            answer = http.post("/v1/completions", json=body).json()
            return int(answer["usage"]["prompt_tokens_details"]["cached_tokens"])

        cached()
        assert cached() > 0  # the first answer's KV cache served the second
        engine = app.state.daemon.engine
        config.write_text(
            f"hf_cache: false\nmodel_dirs: [{tiny_models}]\npool: {{prompt_cache_bytes: 0}}\n"
        )
        wait_until(lambda: engine.prompt_cache_bytes == 0, timeout=30, what="the edit")
        assert cached() == 0
        assert cached() == 0
