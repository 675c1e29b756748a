"""Models served across several machines: one pool entry, one worker group.

A `models:` entry with `distributed:` is loaded by starting `mlx.launch`, which runs
`mlx_lm.server` on every host (MLX's own distributed runtime: ring, JACCL or MPI; tensor or
pipeline parallel, `mlx_lm.sharded_load`). Rank 0 runs here and serves HTTP on a private
loopback port; requests reach it through the upstream forwarding path (`remote.forward`). The
group is started in its own process session, so an unload stops every local rank at once
(remote ranks stop when their ring peers go). A group that exits by itself is restarted with
backoff while its entry stays loaded; requests meanwhile wait for it. Each running group is
noted in the cache folder, so groups left by a daemon that was killed (SIGKILL takes no group
with it) are stopped when the next daemon starts. `RoutedLoader` sends the
pool's loads and unloads of such entries here and every other one to the engine. No MLX is
imported here: the ranks are other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from .config import DistributedConfig
from .engine import GenerationRequest, LoadSpec, ModelInfo
from .errors import ModelLoadError, PoolBusyError
from .paths import default_paths
from .pool import Loader
from .remote import Outcome, RemoteStream, forward

log = logging.getLogger(__name__)

#: how long a group may take to load its shards and answer on its port
START_TIMEOUT = 900.0
#: how long the ranks get to exit on SIGTERM before SIGKILL
STOP_GRACE = 10.0
#: the longest wait between two restarts of a group that keeps failing
MAX_BACKOFF = 60.0
#: mlx_lm.server's name for the model it was started with
SERVED_ID = "default_model"

State = Literal["starting", "ready", "failed", "restarting"]


@dataclass(slots=True)
class Group:
    """One running (or restarting) worker group."""

    key: str
    config: DistributedConfig
    model_path: Path
    state: State = "starting"
    reason: str = ""
    process: asyncio.subprocess.Process | None = None
    port: int = 0
    restarts: int = 0
    stopping: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    client: httpx.AsyncClient | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: the folder where running groups are noted (`Groups`)
    note: Path | None = None

    @property
    def pid(self) -> int | None:
        """The launcher's pid, which is also the group's process-group id."""
        return self.process.pid if self.process is not None else None


class Groups:
    """Event-loop side: the worker groups of the distributed entries in the registry."""

    def __init__(self, notes: Path | None = None) -> None:
        self._configs: dict[str, DistributedConfig] = {}
        self._groups: dict[str, Group] = {}
        #: one file per running group, `<daemon pid>-<group pid>`: what a killed daemon left
        self._notes = notes if notes is not None else default_paths().cache_dir / "groups"
        stop_leftovers(self._notes)

    def configure(self, configs: Mapping[str, DistributedConfig]) -> None:
        """The registry's distributed entries (by id), after every rebuild."""
        self._configs = dict(configs)

    def handles(self, key: str) -> bool:
        return key in self._configs or key in self._groups

    def group(self, key: str) -> Group | None:
        return self._groups.get(key)

    def reasons(self) -> list[str]:
        """Groups that exited by themselves and are not back yet, for `/health`."""
        return [
            f"the worker group of `{g.key}` failed ({g.reason}); restarting"
            for g in self._groups.values()
            if g.state == "failed"
        ]

    # ---- the pool's loads and unloads ------------------------------------------------------

    async def load(self, spec: LoadSpec) -> ModelInfo:
        config = self._configs.get(spec.key)
        if config is None:
            raise ModelLoadError(f"`{spec.key}` is not a distributed model")
        started = time.perf_counter()
        group = Group(spec.key, config, spec.model_path)
        self._groups[spec.key] = group
        group.note = self._notes
        try:
            await _start(group)
        except BaseException:
            self._groups.pop(spec.key, None)
            await _stop(group)
            raise
        group.tasks.append(asyncio.create_task(self._watch(group), name=f"group-{spec.key}"))
        # The weights are on the ranks; the pool counts the entry's estimate (`targets.py`).
        return ModelInfo(
            nbytes=0,
            context_length=None,
            vocab_size=0,
            has_chat_template=True,
            load_seconds=time.perf_counter() - started,
        )

    async def unload(self, key: str) -> None:
        group = self._groups.pop(key, None)
        if group is not None:
            await _stop(group)

    async def close(self) -> None:
        for key in list(self._groups):
            await self.unload(key)

    # ---- requests --------------------------------------------------------------------------

    async def generate(self, key: str, request: GenerationRequest, *, wait: float) -> RemoteStream:
        """Forward to the group's rank 0, waiting up to `wait` seconds for a restart."""
        group = self._groups.get(key)
        if group is None:
            raise ModelLoadError(f"The worker group of `{key}` is not running")
        if not group.ready.is_set():
            try:
                await asyncio.wait_for(group.ready.wait(), wait)
            except TimeoutError:
                raise PoolBusyError(
                    f"The worker group of `{key}` is restarting ({group.reason}); retry shortly"
                ) from None
        assert group.client is not None  # noqa: S101 - set whenever `ready` is
        return forward(group.client, key, SERVED_ID, request, _ignore)

    # ---- crashes ---------------------------------------------------------------------------

    async def _watch(self, group: Group) -> None:
        """Restart the group whenever it exits by itself, waiting longer after each failure."""
        backoff = 1.0
        while not group.stopping:
            assert group.process is not None  # noqa: S101 - started before watching
            code = await group.process.wait()
            if group.stopping:
                return
            group.ready.clear()
            group.state, group.reason = "failed", f"exited with code {code}"
            log.warning("worker group %s %s; restarting in %gs", group.key, group.reason, backoff)
            await _kill(group)
            await asyncio.sleep(backoff)
            group.state = "restarting"
            group.restarts += 1
            try:
                await _start(group)
                backoff = 1.0
            except ModelLoadError as exc:
                await _kill(group)  # one that never answered may still be running
                group.state, group.reason = "failed", exc.message
                backoff = min(backoff * 2, MAX_BACKOFF)


class RoutedLoader:
    """The pool's `Loader`: distributed entries to their worker groups, the rest to `inner`."""

    def __init__(self, inner: Loader, groups: Groups) -> None:
        self._inner = inner
        self._groups = groups

    async def load(self, spec: LoadSpec) -> ModelInfo:
        if self._groups.handles(spec.key):
            return await self._groups.load(spec)
        return await self._inner.load(spec)

    async def unload(self, key: str) -> None:
        # By what is running, not by the config: an entry that became (or stopped being)
        # distributed is unloaded from where it was loaded.
        if self._groups.group(key) is not None:
            await self._groups.unload(key)
        else:
            await self._inner.unload(key)


def _ignore(_: Outcome) -> None:
    """A group's requests are counted by the access log; there is no upstream to mark down."""


def launch_argv(group: Group, *, launcher: str, ring_port: int) -> list[str]:
    """`mlx.launch` running `mlx_lm server` on every host, rank 0 on `group.port`."""
    config = group.config
    python = str(Path(config.python).expanduser()) if config.python else sys.executable
    argv = [launcher, "--backend", config.backend, "--python", python]
    if config.hostfile is not None:
        argv += ["--hostfile", str(Path(config.hostfile).expanduser())]
    else:
        argv += ["--hosts", ",".join(config.hosts or ())]
    if config.backend == "ring":
        argv += ["--starting-port", str(ring_port)]
    for name, value in config.env.items():
        argv += ["--env", f"{name}={value}"]
    argv += ["--", "-m", "mlx_lm", "server", "--model", str(group.model_path)]
    argv += ["--host", "127.0.0.1", "--port", str(group.port)]
    if config.parallel == "pipeline":
        argv.append("--pipeline")
    return argv


def _launcher() -> str:
    beside = Path(sys.executable).with_name("mlx.launch")
    found = str(beside) if beside.exists() else shutil.which("mlx.launch")
    if found is None:
        raise ModelLoadError("`mlx.launch` (from the mlx package) is not installed")
    return found


async def _start(group: Group) -> None:
    """Start the ranks and wait until rank 0 answers; ModelLoadError if they exit first."""
    hosts = len(group.config.hosts or ()) or 8  # a hostfile's ranks: room for 8
    group.port, ring_port = _free_ports(hosts)
    argv = launch_argv(group, launcher=_launcher(), ring_port=ring_port)
    group.state, group.reason = ("restarting" if group.restarts else "starting"), ""
    group.ready.clear()
    log.info("starting the worker group of %s: %s", group.key, " ".join(argv))
    group.process = await asyncio.create_subprocess_exec(
        *argv,
        # A pipe nobody writes: mlx.launch forwards its stdin to the ranks and would spin
        # on an always-readable /dev/null.
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: one signal reaches every local rank
    )
    group.tasks.append(asyncio.create_task(_relay(group, group.process), name="group-log"))
    _note(group, group.process.pid, present=True)
    if group.client is None:
        group.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10), trust_env=False)
    group.client.base_url = httpx.URL(f"http://127.0.0.1:{group.port}/v1/")
    exited = asyncio.ensure_future(group.process.wait())
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while not await _answers(group.client):
            if exited.done():
                raise ModelLoadError(
                    f"The worker group of `{group.key}` exited while starting (code "
                    f"{exited.result()}); its output is in the daemon's log"
                )
            if time.monotonic() > deadline:
                raise ModelLoadError(
                    f"The worker group of `{group.key}` did not answer within "
                    f"{START_TIMEOUT:.0f}s; its output is in the daemon's log"
                )
            await asyncio.sleep(0.25)
    finally:
        exited.cancel()
    group.state, group.reason = "ready", ""
    group.ready.set()
    log.info("the worker group of %s is ready on port %d", group.key, group.port)


async def _answers(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("models", timeout=2.0)).status_code == 200
    except httpx.HTTPError:
        return False


async def _relay(group: Group, process: asyncio.subprocess.Process) -> None:
    """The ranks' output, line by line, into the daemon's log tagged with the entry's id."""
    assert process.stdout is not None  # noqa: S101 - created with a pipe
    while line := await process.stdout.readline():
        log.info("[%s] %s", group.key, line.decode(errors="replace").rstrip())


async def _kill(group: Group) -> None:
    """SIGTERM to the group's processes, SIGKILL to what is left after the grace."""
    process = group.process
    if process is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            await asyncio.wait_for(_group_gone(process.pid), STOP_GRACE)
            break
        except TimeoutError:
            continue
    with contextlib.suppress(ProcessLookupError):
        await process.wait()
    _note(group, process.pid, present=False)


async def _group_gone(pgid: int) -> None:
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)


async def _stop(group: Group) -> None:
    group.stopping = True
    group.ready.clear()
    # The watcher first, so that no restart starts after the kill below.
    current = asyncio.current_task()
    for task in group.tasks:
        if task is not current:
            task.cancel()
    await asyncio.gather(*(t for t in group.tasks if t is not current), return_exceptions=True)
    await _kill(group)
    if group.client is not None:
        await group.client.aclose()
    log.info("the worker group of %s stopped", group.key)


def _free_ports(ring: int) -> tuple[int, int]:
    """A free port for rank 0's HTTP, and the first of `ring` consecutive free ones for the
    ring backend (free a moment ago: the launcher binds them itself)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + ring + 1 > 65535:
            continue
        try:
            for port in range(base, base + ring + 1):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base + ring, base
    raise ModelLoadError("No free local ports for a worker group")


def _note(group: Group, pgid: int, *, present: bool) -> None:
    if group.note is None:
        return
    path = group.note / f"{os.getpid()}-{pgid}"
    try:
        if present:
            group.note.mkdir(parents=True, exist_ok=True)
            path.write_text(group.key)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:  # only the clean-up after a crash depends on it
        log.warning("cannot note the worker group of %s: %s", group.key, exc)


def stop_leftovers(notes: Path) -> None:
    """Stop the groups of daemons that are gone (killed, so they could not stop them)."""
    if not notes.is_dir():
        return
    for path in notes.iterdir():
        owner, _, pgid = path.name.partition("-")
        if not (owner.isdigit() and pgid.isdigit()) or _alive(int(owner)):
            continue
        if "mlx.launch" in _command(int(pgid)):  # not a pid reused since by something else
            log.warning("stopping a worker group left by a daemon that was killed (%s)", path)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pgid), signal.SIGKILL)
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _command(pid: int) -> str:
    """A process's command line (`ps`, on Linux and macOS alike); empty if it is gone."""
    found = subprocess.run(  # noqa: S603 - a fixed program and a number
        ["ps", "-o", "command=", "-p", str(pid)],  # noqa: S607 - ps is on every PATH
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip()
