"""Running the daemon: logging, the uvicorn server, and a graceful drain on SIGTERM/SIGINT.

`run()` is what `mlxrouter serve` calls. The first signal marks the daemon draining (new
requests get 503), waits up to `shutdown_grace` seconds for requests in flight — streams
included — to finish, then stops the server, which unloads every model. A second signal
exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from .api import create_app
from .cli import connect_url
from .config import Config
from .daemon import Daemon
from .listener import bind_socket
from .paths import default_paths
from .registry import Registry
from .targets import only_model

log = logging.getLogger("mlxrouter")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Rotating log file: 10 MB a file, five kept.
LOG_BYTES = 10_000_000
LOG_BACKUPS = 5
# After the drain, how long uvicorn waits for idle connections to close.
CONNECTION_CLOSE_S = 5


def setup_logging(level: str, *, log_file: Path | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_file, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
            )
        )
    # force: libraries imported earlier may have configured the root logger already.
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, handlers=handlers, force=True)
    # httpx logs every request to an upstream (each health poll) at info: too chatty.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def ready_line(base_url: str, registry: Registry, default_model: str | None) -> str:
    """The one line `serve` prints once it listens: the OpenAI base URL, how many models the
    registry holds and which one a request without `model` gets (as `Daemon.target` picks)."""
    models = sum(1 for entry in registry if entry.kind == "model")
    adapters = sum(1 for entry in registry if entry.kind == "adapter")
    remote = len(registry) - models - adapters
    counts = f"{models} model{'' if models == 1 else 's'}"
    if adapters:
        counts += f", {adapters} adapter{'' if adapters == 1 else 's'}"
    if remote:
        counts += f", {remote} remote"
    default = default_model or only_model(registry)
    if default is None:
        default = "none"
    elif default not in registry.ids():
        default += " (not in the registry)"
    return f"mlxrouter ready: {base_url}/v1 ({counts}; default model: {default})"


class DrainingServer(uvicorn.Server):
    """uvicorn's server with mlxrouter's shutdown: drain first, then stop."""

    def __init__(self, config: uvicorn.Config, daemon: Daemon, grace: float) -> None:
        super().__init__(config)
        self._daemon = daemon
        self._grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # uvicorn exits when the lifespan or the bind fails, so here it is listening.
        port = self.config.port
        for server in self.servers:
            for sock in server.sockets:
                port = sock.getsockname()[1]  # the real one when --port 0
                break
        daemon = self._daemon
        line = ready_line(
            connect_url(self.config.host, port), daemon.registry, daemon.config.default_model
        )
        print(line, flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the signal handler, on the event loop's thread."""
        if self._draining or self._loop is None:
            log.warning("second signal: exiting now")
            self.force_exit = self.should_exit = True
            # uvicorn's forced exit can still wait on a busy engine step: do not.
            threading.Timer(1.0, os._exit, args=(128 + sig,)).start()
            return
        self._draining = True
        self._daemon.draining = True
        log.info(
            "draining: new requests get 503; waiting up to %.0fs for %s",
            self._grace,
            "requests in flight",
        )
        self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        # Live event streams end now (on the loop, not in the signal handler): uvicorn's
        # shutdown waits for every open connection.
        self._daemon.activity.close()
        deadline = time.monotonic() + self._grace
        # Polling a few state counts is simpler than wiring an event through pool and routes.
        while self._daemon.busy() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        if self._daemon.busy():
            log.warning("shutdown grace over with requests still in flight; stopping anyway")
        self.should_exit = True


def run(config: Config, *, config_path: Path | None, overrides: Mapping[str, Any]) -> int:
    """Serve until a signal; blocks. Returns the exit code."""
    log_file = default_paths().log_dir / "mlxrouter.log" if config.log_file else None
    setup_logging(config.log_level, log_file=log_file)
    log.info("config: %s", config_path or "none (built-in defaults)")
    # No file yet: watch where it would be, so creating it later applies it.
    watched = config_path or default_paths().config_file
    daemon = Daemon(config, config_path=watched, overrides=overrides)
    app = create_app(config, daemon=daemon)
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level.lower(),
            log_config=None,  # keep the handlers set up above
            access_log=False,  # mlxrouter logs one richer line per request itself
            timeout_graceful_shutdown=CONNECTION_CLOSE_S,
        ),
        daemon,
        config.shutdown_grace,
    )
    # uvicorn re-raises the signals it caught to the handlers installed before it ran, once
    # it has stopped: make those no-ops, so a clean drain exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    try:
        # Bound here for its bounded send buffer (a stalled reader is noticed, listener.py).
        sock = bind_socket(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc.strerror or exc)
        daemon.engine.close()
        return 1
    with sock:
        server.run(sockets=[sock])  # the app's shutdown stops the daemon and its engine thread
    return 0
