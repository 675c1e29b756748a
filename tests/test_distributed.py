"""A model served across several processes by MLX's own distributed runtime: a `models:` entry
with `distributed:` on three loopback "hosts" (ring backend, tensor parallel: SmolLM2-135M's 9
query / 3 KV heads split over 3 ranks), served by a real `mlxrouter serve` through `mlx.launch`
and `mlx_lm.server`. Linux only for the process-group checks (/proc)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _harness import start_mlxrouter, stop
from conftest import wait_until

from mlxrouter.config import parse_config
from mlxrouter.distributed import Group, launch_argv
from mlxrouter.errors import ConfigError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process groups in /proc"),
]

ASK = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 8,
}


def _group(pgid: int) -> list[int]:
    """The processes of process group `pgid` (the launcher and the ranks on this machine)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _ranks(pgid: int) -> list[int]:
    """The ranks: the group's processes but its leader, the launcher."""
    ranks = []
    for pid in _group(pgid):
        if pid == pgid:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mlx_lm" in cmdline and b"server" in cmdline:
            ranks.append(pid)
    return ranks


def _worker(http: httpx.Client, model: str) -> dict[str, Any] | None:
    entries = http.get("/admin/pool").json()["entries"]
    return next((e["worker"] for e in entries if e["id"] == model), None)


def _answer(http: httpx.Client, model: str) -> str:
    reply = http.post("/v1/chat/completions", json={**ASK, "model": model})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


@dataclass
class Served:
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    http: httpx.Client | None = None

    def start(self) -> httpx.Client:
        if self.http is not None:  # a restart: the old daemon's client goes with it
            self.http.close()
        self.process, url = start_mlxrouter(
            ["--config", str(self.config), "--no-demo"], log=self.log, env=dict(os.environ)
        )
        self.http = httpx.Client(base_url=url, timeout=600)
        return self.http

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.process is not None:
            stop(self.process)  # SIGTERM: the daemon stops its groups on the way out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("distributed")
    config = root / "config.yaml"
    config.write_text(
        "hf_cache: false\nlog_file: false\nmodels:\n"
        f"  smol: {{path: {demo_model}}}\n"
        f"  smol-3: {{path: {demo_model}, distributed: "
        "{hosts: [127.0.0.1, 127.0.0.1, 127.0.0.1], backend: ring, parallel: tensor}}\n"
    )
    daemon = Served(config, root / "serve.log")
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def daemon(served: Served) -> httpx.Client:
    assert served.http is not None
    return served.http


def test_three_ranks_answer_what_one_process_answers(daemon: httpx.Client) -> None:
    spread = _answer(daemon, "smol-3")
    assert "Paris" in spread
    assert spread == _answer(daemon, "smol")
    worker = _worker(daemon, "smol-3")
    assert worker is not None
    assert worker["state"] == "ready"
    assert len(_ranks(worker["pid"])) == 3


def test_a_killed_rank_restarts_the_group(daemon: httpx.Client) -> None:
    _answer(daemon, "smol-3")  # loaded (again, if an earlier test unloaded it)
    before = _worker(daemon, "smol-3")
    assert before is not None
    os.kill(_ranks(before["pid"])[-1], signal.SIGKILL)
    # mlx.launch stops the other ranks when one dies; the daemon starts a new group.
    wait_until(
        lambda: (
            (_worker(daemon, "smol-3") or {}).get("restarts") == before["restarts"] + 1
            and (_worker(daemon, "smol-3") or {}).get("state") == "ready"
        ),
        timeout=300,
        what="the group to restart",
    )
    after = _worker(daemon, "smol-3")
    assert after is not None
    assert after["pid"] != before["pid"]
    assert _group(before["pid"]) == []  # nothing of the old group is left
    assert "Paris" in _answer(daemon, "smol-3")


def test_unload_stops_every_rank(daemon: httpx.Client) -> None:
    _answer(daemon, "smol-3")
    worker = _worker(daemon, "smol-3")
    assert worker is not None
    assert _group(worker["pid"])
    unloaded = daemon.post("/admin/unload", json={"model": "smol-3"})
    assert unloaded.json()["unloaded"] is True
    assert _group(worker["pid"]) == []
    assert _worker(daemon, "smol-3") is None


def test_groups_of_a_killed_daemon_are_stopped_by_the_next(served: Served) -> None:
    """SIGKILL takes no group with it; the next daemon (same cache folder) stops it."""
    assert served.http is not None
    _answer(served.http, "smol-3")
    worker = _worker(served.http, "smol-3")
    assert worker is not None
    assert served.process is not None
    served.process.kill()
    served.process.wait(30)
    assert len(_ranks(worker["pid"])) == 3  # orphaned, still running
    served.start()
    assert _group(worker["pid"]) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{distributed: {hosts: [a, b]}}", "`models.x.distributed` needs the entry's `path`"),
        ("{path: /m, distributed: {hosts: [a]}}", "needs two hosts or more"),
        ("{path: /m, distributed: {hosts: [a, b], hostfile: h}}", "`hosts` or `hostfile`"),
        ("{path: /m, distributed: {hosts: [a, b], backend: tcp}}", "backend"),
        ("{path: /m, distributed: {hosts: [a, b], parallel: data}}", "parallel"),
    ],
)
def test_bad_distributed_config_names_the_key(entry: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(f"models: {{x: {entry}}}")


def test_launch_command() -> None:
    """The `mlx.launch` command a group runs: hosts, backend, its ring ports, rank 0's HTTP
    port on loopback, pipeline parallelism and the ranks' environment."""
    config = parse_config(
        "models: {x: {path: /m, distributed: {hosts: [10.0.0.1, 10.0.0.2], "
        "parallel: pipeline, python: /opt/py, env: {A: b}}}}"
    ).models["x"]
    assert config.distributed is not None
    group = Group("x", config.distributed, Path("/m"), port=8123)
    argv = launch_argv(group, launcher="mlx.launch", ring_port=9000)
    joined = " ".join(argv)
    assert "--backend ring --python /opt/py --hosts 10.0.0.1,10.0.0.2" in joined
    assert "--starting-port 9000 --env A=b --" in joined
    assert argv[argv.index("--") + 1 :] == [
        *("-m", "mlx_lm", "server", "--model", "/m", "--host", "127.0.0.1"),
        *("--port", "8123", "--pipeline"),
    ]
