"""Operations: Prometheus metrics, the graceful drain on SIGTERM, health, logs, CLI basics."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import running_daemon, spawned_daemon, wait_until
from prometheus_client.parser import text_string_to_metric_families
from tinymodel import make_tiny_model

from mlxrouter.cli import main as cli_main


@pytest.fixture(scope="module")
def long_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long")
    make_tiny_model(root / "long", seed=5, context=8192)
    return root


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_move_as_requests_are_served(tiny_models: Path) -> None:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        before = samples(url)
        assert before[("mlxrouter_loaded_models", ())] == 0
        body = {"model": "tiny-a", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        assert httpx.post(url + "/v1/completions", json=body, timeout=60).status_code == 200
        assert (
            httpx.post(
                url + "/v1/completions", json={**body, "model": "nope"}, timeout=60
            ).status_code
            == 404
        )
        after = samples(url)
        model = (("model", "tiny-a"),)
        assert after[("mlxrouter_requests_total", (("model", "tiny-a"), ("status", "200")))] == 1
        assert after[("mlxrouter_requests_total", (("model", "(unknown)"), ("status", "404")))] == 1
        assert after[("mlxrouter_completion_tokens_total", model)] == 4
        assert after[("mlxrouter_prompt_tokens_total", model)] > 0
        assert after[("mlxrouter_model_loads_total", model)] == 1
        assert after[("mlxrouter_time_to_first_token_seconds_count", model)] == 1
        assert after[("mlxrouter_model_load_seconds_count", ())] == 1
        assert after[("mlxrouter_loaded_models", ())] == 1
        assert after[("mlxrouter_loaded_bytes", model)] > 0
        assert after[("mlxrouter_requests_in_flight", ())] == 0
        assert after[("mlxrouter_queue_depth", ())] == 0
        assert ("mlxrouter_evictions_total", ()) in after


def test_openapi_document_lists_every_route(tiny_models: Path) -> None:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        spec = httpx.get(url + "/schema/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model_id}",
        "/health",
        "/metrics",
        "/admin/pool",
    ]:
        assert path in spec["paths"], path
    request = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert request["content"]["application/json"]["schema"]


@pytest.fixture
def served_process(
    long_models: Path, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    config = tmp_path / "config.yaml"
    config.write_text(f"hf_cache: false\nmodel_dirs: [{long_models}]\nshutdown_grace: 20\n")
    with spawned_daemon(
        ["--config", str(config)],
        log=tmp_path / "serve.log",
        env={"MLXROUTER_LOG_DIR": str(tmp_path / "logs")},
    ) as (url, process):
        yield url, process, tmp_path


def test_sigterm_drains_streams_refuses_new_requests_and_exits_zero(
    served_process: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, process, tmp_path = served_process
    lines: list[str] = []
    first = threading.Event()

    def stream() -> None:
        body = {
            "model": "long",
            "prompt": "Hi",
            "max_tokens": 3000,
            "stream": True,
            "logit_bias": {"2": -100},
        }
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                lines.append(line)
                first.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert first.wait(30)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(url + "/health").status_code == 503, what="the drain to start")
    refused = httpx.post(
        url + "/v1/completions", json={"model": "long", "prompt": "Hi", "max_tokens": 2}, timeout=60
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert httpx.get(url + "/health").status_code == 503
    thread.join(60)
    assert "data: [DONE]" in lines  # the stream in flight finished
    assert '"finish_reason":"length"' in "".join(lines)
    assert process.wait(30) == 0
    assert time.monotonic() - started < 25
    log_file = tmp_path / "logs" / "mlxrouter.log"
    text = log_file.read_text()
    assert "draining" in text and "status=200" in text
    assert "Hi" not in text.replace("Hi'", "")  # prompts are not logged by default


def test_second_signal_exits_at_once(
    served_process: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, process, _ = served_process
    first = threading.Event()

    def stream() -> None:
        body = {
            "model": "long",
            "prompt": "Hi",
            "max_tokens": 8000,
            "stream": True,
            "logit_bias": {"2": -100},
        }
        try:
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as response:
                for _ in response.iter_lines():
                    first.set()
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=stream)
    thread.start()
    assert first.wait(30)
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: httpx.get(url + "/health").status_code == 503, what="the drain to start")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(10)
    assert time.monotonic() - started < 5
    thread.join(30)


def test_cli_version_paths_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["--version"])
    assert info.value.code == 0
    assert "mlxrouter" in capsys.readouterr().out
    assert cli_main(["paths"]) == 0
    out = capsys.readouterr().out
    assert "config" in out and "models" in out and "logs" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: {max_models: zero}\n")
    assert cli_main(["models", "--config", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pool.max_models" in err[0]
    assert cli_main(["import-gguf", str(tmp_path / "missing.gguf")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_cli_models_table(
    capsys: pytest.CaptureFixture[str], tiny_models: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n")
    assert cli_main(["models", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["ID", "KIND", "SOURCE"]
    assert "tiny-a" in out and "model_dir" in out


@pytest.mark.parametrize(
    "command", ["serve", "models", "ps", "load", "unload", "service", "import-gguf", "paths"]
)
def test_every_command_has_help_with_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli_main([command, "--help"])
    assert "example:" in capsys.readouterr().out
