"""The command line as a user meets it: finding the running daemon (--url, MLXROUTER_URL, the
config file), a clear error when nothing answers, `load` of a loaded entry, truthful help,
`serve`'s ready line, and the first-run set-up script's stage lines."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, read_line, running_daemon

from mlxrouter.cli import main as cli_main
from mlxrouter.config import parse_config
from mlxrouter.registry import build_registry
from mlxrouter.server import ready_line


@pytest.fixture(scope="module")
def daemon(tiny_models: Path) -> Iterator[str]:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        yield url


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connections are refused, and no
    other process can take the port while the socket is open."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty default config folder, and no MLXROUTER_URL."""
    folder = tmp_path / "config"
    folder.mkdir()
    monkeypatch.setenv("MLXROUTER_CONFIG_DIR", str(folder))
    monkeypatch.delenv("MLXROUTER_URL", raising=False)
    return folder


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


# ---- finding the daemon ----------------------------------------------------------------------


def test_client_commands_use_url_then_env_then_config(
    daemon: str,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    default_config = config_dir / "config.yaml"
    with refused_url() as dead:
        # The config file `mlxrouter` would load names the daemon's port.
        default_config.write_text(f"hf_cache: false\nport: {_port(daemon)}\n")
        assert cli_main(["ps"]) == 0
        assert "loaded" in capsys.readouterr().out

        # MLXROUTER_URL wins over the config file...
        default_config.write_text(f"hf_cache: false\nport: {_port(dead)}\n")
        monkeypatch.setenv("MLXROUTER_URL", daemon)
        assert cli_main(["ps"]) == 0
        # ...the OpenAI base URL (what `serve` prints) works too...
        monkeypatch.setenv("MLXROUTER_URL", daemon + "/v1")
        assert cli_main(["ps"]) == 0
        capsys.readouterr()

        # ...and --url wins over MLXROUTER_URL.
        monkeypatch.setenv("MLXROUTER_URL", dead)
        assert cli_main(["ps", "--url", daemon]) == 0
        assert cli_main(["ps"]) == 1
        err = capsys.readouterr().err
        assert dead in err and "MLXROUTER_URL" in err


def test_a_refused_connection_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "MLXROUTER_CONFIG_DIR": str(tmp_path)}
    env.pop("MLXROUTER_URL", None)
    with refused_url() as dead:
        for argv, extra in (
            (["ps", "--url", dead], {}),
            (["load", "tiny-a"], {"MLXROUTER_URL": dead}),
            (["unload", "tiny-a", "--url", dead.removeprefix("http://")], {}),
        ):
            result = subprocess.run(
                [sys.executable, "-m", "mlxrouter", *argv],
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 1, result
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr  # no traceback
            assert dead in lines[0]
            assert "--url" in lines[0] and "MLXROUTER_URL" in lines[0]
            assert result.stdout == ""


def test_load_of_a_loaded_entry_says_so(daemon: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["unload", "tiny-b", "--url", daemon]) == 0
    capsys.readouterr()
    assert cli_main(["load", "tiny-b", "--url", daemon]) == 0
    assert capsys.readouterr().out.strip() == "loaded tiny-b"
    assert cli_main(["load", "tiny-b", "--url", daemon]) == 0
    assert capsys.readouterr().out.strip() == "tiny-b was already loaded"
    assert cli_main(["unload", "tiny-b", "--url", daemon]) == 0


def test_load_pins_and_unpins(daemon: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["unload", "tiny-b", "--url", daemon]) == 0
    capsys.readouterr()
    assert cli_main(["load", "tiny-b", "--pin", "--url", daemon]) == 0
    assert capsys.readouterr().out.strip() == "loaded tiny-b, pinned"
    assert cli_main(["ps", "--url", daemon]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if "tiny-b" in line]
    assert " yes " in f"{row} "  # the pinned column
    assert cli_main(["load", "tiny-b", "--unpin", "--url", daemon]) == 0
    assert capsys.readouterr().out.strip() == "tiny-b was already loaded, unpinned"
    assert cli_main(["unload", "tiny-b", "--url", daemon]) == 0


def test_models_help_names_only_the_flags_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main(["models", "--help"])
    text = capsys.readouterr().out
    # `models` scans the disk for what the config would serve; host and port play no part.
    assert "--config" in text and "--host" not in text and "--port" not in text
    assert "no daemon" in text.lower() and "model_dirs" in text
    with pytest.raises(SystemExit) as info:
        cli_main(["models", "--port", "9"])
    assert info.value.code == 2


# ---- serve's ready line ------------------------------------------------------------------------


def test_ready_line_counts_and_default(tiny_models: Path, tmp_path: Path) -> None:
    two = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"))
    url = "http://127.0.0.1:8080"
    assert ready_line(url, two, None) == (
        "mlxrouter ready: http://127.0.0.1:8080/v1 (2 models; default model: none)"
    )
    assert ready_line(url, two, "tiny-b").endswith("(2 models; default model: tiny-b)")
    assert ready_line(url, two, "gone").endswith("default model: gone (not in the registry))")
    shutil.copytree(tiny_models / "tiny-a", tmp_path / "one" / "tiny-a")
    one = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{tmp_path / 'one'}]\n"))
    assert ready_line(url, one, None).endswith("(1 model; default model: tiny-a)")


def test_serve_prints_one_ready_line_once_listening(tiny_models: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\nlog_file: false\n")
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        # Port 0: the kernel picks a free port, and the ready line says which.
        process = subprocess.Popen(
            [sys.executable, "-m", "mlxrouter", "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert process.stdout is not None
        line = read_line(process.stdout, time.monotonic() + 120)
        assert line, log.read_text()
        prefix, _, rest = line.strip().partition(" (")
        assert prefix.startswith("mlxrouter ready: http://127.0.0.1:")
        assert rest == "2 models; default model: none)"
        base_url = prefix.removeprefix("mlxrouter ready: ")
        assert base_url.endswith("/v1") and not base_url.endswith(":0/v1")
        # Printed once listening: the URL answers at once.
        ids = [m["id"] for m in httpx.get(base_url + "/models", timeout=30).json()["data"]]
        assert ids == ["tiny-a", "tiny-b"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
        assert "ready" not in process.stdout.read().decode()  # only one ready line
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


# ---- the first-run set-up script ----------------------------------------------------------------

# Plays python3 for _setup.sh: `-m venv DIR` copies itself to DIR/bin/python; `-m pip ...`
# prints like pip, and fails the project install when FAKE_PIP_FAIL is set.
FAKE_PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit $?; fi
if [ "$1 $2" = "-m pip" ]; then
    shift 2
    echo "Collecting fake-dependency for: $*"
    echo "pip chatter on stderr" >&2
    case "$*" in *" -e "*) if [ -n "${FAKE_PIP_FAIL:-}" ]; then echo "ERROR: boom"; exit 1; fi;; esac
    exit 0
fi
exit 2
"""


def _setup_tree(root: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the repository's set-up script in a scratch tree, with the fake python."""
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "_setup.sh", root / "scripts" / "_setup.sh")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    fake = root / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return root / "scripts" / "_setup.sh", {**os.environ, "PYTHON": str(fake)}


def _source(script: Path, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", 'source "$1" run', "_", str(script)],
        env=env,
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


def test_setup_prints_a_line_per_stage_and_logs_pip(tmp_path: Path) -> None:
    script, env = _setup_tree(tmp_path)
    venv = tmp_path / ".venv"
    result = _source(script, env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"mlxrouter: creating the virtual environment {venv}",
        "mlxrouter: upgrading pip",
        "mlxrouter: installing mlxrouter and its dependencies (first run: a few minutes)",
    ]
    log = (venv / "install.log").read_text()
    assert "Collecting fake-dependency for: install --upgrade pip" in log
    assert f"Collecting fake-dependency for: install -e {tmp_path}" in log
    assert "pip chatter on stderr" in log
    assert (venv / ".mlxrouter-installed").is_file()
    # Installed: the next run has nothing to do and says nothing.
    again = _source(script, env)
    assert (again.returncode, again.stderr) == (0, "")


def test_setup_failure_shows_the_log_tail(tmp_path: Path) -> None:
    script, env = _setup_tree(tmp_path)
    result = _source(script, {**env, "FAKE_PIP_FAIL": "1"})
    assert result.returncode == 1
    assert "ERROR: boom" in result.stderr
    assert f"installation failed (full log: {tmp_path / '.venv' / 'install.log'})" in result.stderr
    assert not (tmp_path / ".venv" / ".mlxrouter-installed").exists()


def test_setup_on_a_terminal_lets_pip_output_through(tmp_path: Path) -> None:
    script, env = _setup_tree(tmp_path)
    main, secondary = pty.openpty()
    process: subprocess.Popen[bytes] | None = None
    try:
        process = subprocess.Popen(
            ["bash", "-c", 'source "$1" run', "_", str(script)],
            env=env,
            cwd=script.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        )
        os.close(secondary)
        secondary = -1
        screen = b""
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, screen
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        assert process.wait(30) == 0
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(30)
        if secondary != -1:
            os.close(secondary)
        os.close(main)
    text = screen.decode().replace("\r\n", "\n")
    assert "mlxrouter: upgrading pip\n" in text
    assert "Collecting fake-dependency for: install --upgrade pip" in text
    assert "pip chatter on stderr" in text
    assert "Collecting fake-dependency" in (tmp_path / ".venv" / "install.log").read_text()
