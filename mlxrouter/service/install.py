"""Installing and removing the service: write or remove one file and drive the service
manager (`launchctl` / `systemctl --user`) through `runner`, the one boundary tests replace.
Each runner call blocks until that command exits (at most `COMMAND_TIMEOUT_S`)."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..paths import default_paths
from .base import (
    LABEL,
    STOP_TIMEOUT_S,
    UNIT_NAME,
    ServiceError,
    ServiceFile,
    is_managed,
    service_kind,
    service_path,
)
from .render import render

#: Longest a single launchctl/systemctl call may take (a stop waits for the drain).
COMMAND_TIMEOUT_S = STOP_TIMEOUT_S + 30

Runner = Callable[..., subprocess.CompletedProcess[str]]


def _write_atomically(path: Path, content: bytes) -> None:
    # A half-written unit must never be what the service manager reads.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(content)
    tmp.chmod(0o644)
    tmp.replace(path)


# ---- running the service manager ---------------------------------------------------------


def _call(runner: Runner, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one command to completion (at most `COMMAND_TIMEOUT_S`), capturing its output."""
    try:
        return runner(
            list(argv), capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"cannot run `{shlex.join(argv)}`: {exc}") from None


def _failure(result: subprocess.CompletedProcess[str], argv: Sequence[str]) -> ServiceError:
    detail = (result.stderr or "").strip() or (result.stdout or "").strip()
    first = detail.splitlines()[0] if detail else "no output"
    return ServiceError(f"`{shlex.join(argv)}` failed (exit {result.returncode}): {first}")


def _run(runner: Runner, argv: Sequence[str]) -> None:
    """Run one command; a non-zero exit raises ServiceError naming the command and the first
    line of its error output."""
    result = _call(runner, argv)
    if result.returncode != 0:
        raise _failure(result, argv)


def _launchd_target() -> tuple[str, str]:
    domain = f"gui/{os.getuid()}"
    return domain, f"{domain}/{LABEL}"


def _launchd_loaded(runner: Runner, service: str) -> bool:
    return _call(runner, ["launchctl", "print", service]).returncode == 0


def _launchd_wait_unloaded(runner: Runner, service: str) -> None:
    # bootout can return while the job is still draining; bootstrap would then fail with EIO.
    deadline = time.monotonic() + STOP_TIMEOUT_S + 5
    while _launchd_loaded(runner, service):
        if time.monotonic() > deadline:
            raise ServiceError(f"{service} is still loaded {STOP_TIMEOUT_S + 5} s after bootout")
        time.sleep(0.5)


def _systemctl(*args: str) -> list[str]:
    return ["systemctl", "--user", *args]


# ---- install / uninstall -----------------------------------------------------------------


def install(
    config_path: Path | None,
    *,
    force: bool = False,
    runner: Runner = subprocess.run,
    platform: str | None = None,
    home: Path | None = None,
    executable: Path | None = None,
) -> ServiceFile:
    """Write the service file and make sure the service is loaded, enabled and running.

    Blocks until the service manager commands finish; replacing a running service waits for
    its drain (up to `STOP_TIMEOUT_S`). Installing identical content again rewrites nothing.
    An existing file without mlxrouter's mark is refused unless `force`. A `config_path` that
    does not exist is refused: `serve --config` would fail at every start."""
    service_kind(platform)  # an unsupported platform is the first thing to report
    if config_path is not None and not config_path.expanduser().is_file():
        raise ServiceError(
            f"config file {config_path} does not exist; create it, "
            "or install without a config path to use the default one"
        )
    service = render(config_path, platform=platform, home=home, executable=executable)
    existed = service.path.exists()
    if existed and not force and not is_managed(service.path):
        raise ServiceError(
            f"refusing to replace {service.path}: it was not written by mlxrouter "
            "(use --force to replace it)"
        )
    changed = not existed or service.path.read_bytes() != service.content
    paths = default_paths()
    # launchd opens the log files itself but will not create their folder; both managers
    # fail to start a job whose working directory is missing.
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    if changed:
        _write_atomically(service.path, service.content)

    if service.kind == "launchd":
        domain, target = _launchd_target()
        # Clears a `launchctl disable` override, which would make bootstrap fail.
        _run(runner, ["launchctl", "enable", target])
        loaded = _launchd_loaded(runner, target)
        if loaded and changed:
            # A loaded job keeps its old definition until it is booted out and back in.
            _run(runner, ["launchctl", "bootout", target])
            _launchd_wait_unloaded(runner, target)
            loaded = False
        if not loaded:
            _run(runner, ["launchctl", "bootstrap", domain, str(service.path)])
        # Starts it if loaded but not running (e.g. after a clean exit); no-op otherwise.
        _run(runner, ["launchctl", "kickstart", target])
    else:
        _run(runner, _systemctl("daemon-reload"))
        if existed and changed:
            # Only restarts a running unit, so it picks up the new definition.
            _run(runner, _systemctl("try-restart", UNIT_NAME))
        _run(runner, _systemctl("enable", "--now", UNIT_NAME))
    return service


def uninstall(
    *,
    force: bool = False,
    runner: Runner = subprocess.run,
    platform: str | None = None,
    home: Path | None = None,
) -> Path | None:
    """Stop and unload the service, then remove its file; returns the removed path, or None
    when no service file was installed.

    Blocks until the service has stopped (its drain takes up to `STOP_TIMEOUT_S`). A file
    without mlxrouter's mark is left alone, service included, unless `force`."""
    kind = service_kind(platform)
    path = service_path(platform=platform, home=home)
    if not path.exists():
        return None
    if not force and not is_managed(path):
        raise ServiceError(
            f"refusing to remove {path}: it was not written by mlxrouter (use --force to remove it)"
        )
    if kind == "launchd":
        _, target = _launchd_target()
        argv = ["launchctl", "bootout", target]
        result = _call(runner, argv)
        # A failure is fine when the job was not loaded (never started, or already out).
        if result.returncode != 0 and _launchd_loaded(runner, target):
            raise _failure(result, argv)
        path.unlink(missing_ok=True)
    else:
        _run(runner, _systemctl("disable", "--now", UNIT_NAME))
        path.unlink(missing_ok=True)
        _run(runner, _systemctl("daemon-reload"))
    return path
