"""Starting and stopping server processes for the scripts (scripts/soak.py, scripts/benchmarks).

`start_mlxrouter` runs `python -m mlxrouter serve ARGS --port 0` and returns once the daemon's
ready line (`mlxrouter ready: http://HOST:PORT/v1 (...)`) says where it listens: the kernel
picks the port as the daemon binds it, so no other process can take it in between. Servers
without such a line (mlx_lm.server) get a `free_port()` and are polled with `wait_until_up`.

`rss_bytes` and `slope` are what the memory scripts (scripts/soak.py, scripts/load_cycles.py)
measure growth with: a process's resident memory, and the least-squares slope of samples.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

READY = re.compile(r"mlxrouter ready: (http://\S+)/v1 ")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bound to port 0, then closed). Racy: another process
    may take it before the caller's server binds it. Only for servers that cannot be told
    `--port 0` and then say which port they got, such as mlx_lm.server."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def read_line(stream: IO[bytes], deadline: float) -> str:
    """One line from a pipe, or "" at EOF or past `deadline` (instead of hanging)."""
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            chunk = os.read(stream.fileno(), 1)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def _copy_rest(stream: IO[bytes], log: Path) -> None:
    """Append whatever the process writes to stdout after its ready line to its log (so the
    pipe never fills up), until the process closes it."""
    with stream, log.open("ab", buffering=0) as out:
        while chunk := os.read(stream.fileno(), 65536):
            out.write(chunk)


#: the daemon's folders (`mlxrouter paths`), each moved under a script's own root
DAEMON_DIRS = {
    "MLXROUTER_CONFIG_DIR": "cfg",
    "MLXROUTER_DATA_DIR": "data",
    "MLXROUTER_LOG_DIR": "logs",
    "MLXROUTER_CACHE_DIR": "cache",
}


def daemon_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a daemon a script starts: its config, data, log and cache folders
    under `root`, never the user's (its prompt caches on disk outlive a run), the hub offline;
    `extra` on top."""
    env = {**os.environ, **{var: str(root / sub) for var, sub in DAEMON_DIRS.items()}}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def start_mlxrouter(
    args: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180.0,
    port: int = 0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m mlxrouter serve ARGS --port 0` (stderr, and stdout after the ready
    line, appended to `log`); returns (process, base URL without /v1) once it listens. Raises
    RuntimeError with the log's tail if it exits or stays silent for `timeout` seconds.
    `port` other than 0: that port (a daemon restarted where its clients expect it)."""
    argv = [sys.executable, "-m", "mlxrouter", "serve", *args, "--port", str(port)]
    with log.open("ab") as err:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err, cwd=cwd)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    said = ""  # what it printed before the ready line (nothing, normally)
    while (match := READY.match(line := read_line(process.stdout, deadline))) is None:
        said += line
        if not line.endswith("\n"):  # stdout closed (it is exiting) or the deadline passed
            break
    if match is None:
        timed_out = time.monotonic() >= deadline
        stop(process, 10)
        process.stdout.close()
        why = f"printed no ready line in {timeout:.0f}s" if timed_out else "exited at start-up"
        said = f" (stdout: {said.strip()[-300:]!r})" if said.strip() else ""
        raise RuntimeError(f"mlxrouter {why}{said}:\n{log_tail(log)}")
    threading.Thread(target=_copy_rest, args=(process.stdout, log), daemon=True).start()
    return process, match.group(1)


def wait_until_up(
    process: subprocess.Popen[bytes], url: str, name: str, log: Path, timeout: float = 180.0
) -> None:
    """Poll `url` + /health until it answers 200; raises RuntimeError (with the log's tail)
    if the process exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited at start-up:\n{log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url + "/health").status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not start within {timeout:.0f}s:\n{log_tail(log)}")


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (VmRSS on Linux, `ps` elsewhere). On macOS this undercounts
    an MLX process: Metal buffers are not in RSS (watch MLX's figures in /admin/pool too)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
    out = subprocess.run(
        ["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout.strip()
    return int(out) * 1024 if out.isdigit() else 0


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (x, y) points (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited after `timeout` seconds; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode
