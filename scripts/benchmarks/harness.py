"""The server processes the suite drives, on loopback, each with its output in a log file:
mlxrouter, started with `--port 0` (its ready line says where it listens), and mlx_lm.server,
which cannot report a port it picked, so it gets a free one beforehand and is polled."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from _harness import free_port, log_tail, start_mlxrouter, stop, wait_until_up

from .common import HOST


class Server:
    """One server process; `start()` returns once it serves at `url`, `stop()` terminates it
    (SIGTERM, then SIGKILL after a timeout) and waits for it."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.args = args  # after the program's own name
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""  # known once started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until it serves; returns the seconds it took."""
        started = time.perf_counter()
        self._launch(timeout)
        return time.perf_counter() - started

    def _launch(self, timeout: float) -> None:
        raise NotImplementedError

    def tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            stop(self.proc, timeout)


class MlxRouter(Server):
    """`python -m mlxrouter serve ARGS --port 0`, up once its ready line names its URL."""

    def _launch(self, timeout: float) -> None:
        self.proc, self.url = start_mlxrouter(
            self.args, log=self.log, env=self.env, cwd=self.log.parent, timeout=timeout
        )


class MlxLmServer(Server):
    """`python -m mlx_lm.server ARGS --host 127.0.0.1 --port PORT`, up once /health says 200."""

    def _launch(self, timeout: float) -> None:
        # Racy: another process may bind the port between free_port() closing it and
        # mlx_lm.server binding it (then the start fails); mlx_lm.server has no --port 0 with
        # a line that says which port it got.
        port = free_port(HOST)
        self.url = f"http://{HOST}:{port}"
        argv = [sys.executable, "-m", "mlx_lm.server", *self.args, "--host", HOST]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--port", str(port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.log.parent,
            )
        wait_until_up(self.proc, self.url, self.name, self.log, timeout)
