"""Install mlxrouter as a login service: a launchd LaunchAgent on macOS, a systemd user unit
on Linux.

`render` and `show` are pure (they read the environment and look for the `mlxrouter`
executable, but write nothing). `install` and `uninstall` write or remove one file and drive
the service manager (`launchctl` / `systemctl --user`) through `runner`, the one boundary tests
replace; each runner call blocks until that command exits (at most `COMMAND_TIMEOUT_S`).
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import MlxRouterError
from .paths import default_paths

#: The launchd label, also the plist's file name.
LABEL = "io.github.mlxrouter"
#: The systemd user unit's name.
UNIT_NAME = "mlxrouter.service"

#: First line of every unit we write; its presence means "ours, safe to replace or remove".
SYSTEMD_MARKER = "# Written by mlxrouter"
#: A plist key launchd ignores; `True` means "ours, safe to replace or remove".
PLIST_MARKER_KEY = "MlxrouterManaged"

#: Variables copied from the installing shell into the service's environment when set, so the
#: daemon sees the same config, data, logs and Hugging Face cache as `mlxrouter` run by hand.
#: The XDG ones matter on Linux, where platformdirs derives its default folders from them.
ENV_VARS = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HUGGINGFACE_HUB_CACHE",
    "MLXROUTER_CONFIG_DIR",
    "MLXROUTER_DATA_DIR",
    "MLXROUTER_LOG_DIR",
    "MLXROUTER_CACHE_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
)
# Values that are not paths, copied verbatim; every other one is made absolute, because a
# service starts in the data folder, not in the installing shell's folder.
_NON_PATH_VARS = frozenset({"HF_HUB_OFFLINE"})
_FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

#: Seconds the service manager waits for a clean stop before killing: the daemon drains
#: in-flight requests for up to 30 s on SIGTERM.
STOP_TIMEOUT_S = 45
#: Longest a single launchctl/systemctl call may take (a stop waits for the drain).
COMMAND_TIMEOUT_S = STOP_TIMEOUT_S + 30

STDOUT_LOG = "mlxrouter.out.log"
STDERR_LOG = "mlxrouter.err.log"

UNSUPPORTED = "service install supports macOS (launchd) and Linux (systemd)"

Kind = Literal["launchd", "systemd"]
Runner = Callable[..., subprocess.CompletedProcess[str]]


class ServiceError(MlxRouterError):
    """Installing or removing the login service failed; the message is one line."""

    code = "service_error"


@dataclass(frozen=True, slots=True)
class ServiceFile:
    """A rendered service definition: where it goes and its exact bytes."""

    path: Path
    content: bytes
    kind: Kind

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")


# ---- locating things ---------------------------------------------------------------------


def _kind(platform: str | None) -> Kind:
    name = sys.platform if platform is None else platform
    if name == "darwin":
        return "launchd"
    if name.startswith("linux"):
        return "systemd"
    raise ServiceError(UNSUPPORTED)


def service_path(*, platform: str | None = None, home: Path | None = None) -> Path:
    """Where the service file lives for this user (pure)."""
    home = Path.home() if home is None else home
    if _kind(platform) == "launchd":
        return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative value.
    config_home = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
    return config_home / "systemd" / "user" / UNIT_NAME


def find_executable() -> Path:
    """The absolute path of the installed `mlxrouter` console script.

    The one next to the running interpreter comes first: it belongs to the same environment
    as the code doing the install, whatever PATH says. Blocks on nothing."""
    beside = Path(sys.executable).parent / "mlxrouter"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside.absolute()
    found = shutil.which("mlxrouter")
    if found:
        return Path(found).absolute()
    raise ServiceError(
        "cannot find the mlxrouter executable; install mlxrouter with pip or pipx first"
    )


def _environment() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH") or _FALLBACK_PATH}
    for name in ENV_VARS:
        value = os.environ.get(name)
        if not value:
            continue
        if name not in _NON_PATH_VARS:
            value = str(Path(value).expanduser().absolute())
        env[name] = value
    return env


# ---- rendering ---------------------------------------------------------------------------


def _program_arguments(config_path: Path | None, executable: Path | None) -> list[str]:
    exe = find_executable() if executable is None else executable.expanduser().absolute()
    args = [str(exe), "serve"]
    if config_path is not None:
        args += ["--config", str(config_path.expanduser().absolute())]
    return args


def _render_plist(args: list[str]) -> bytes:
    paths = default_paths()
    plist: dict[str, Any] = {
        "Label": LABEL,
        PLIST_MARKER_KEY: True,
        "ProgramArguments": args,
        "RunAtLoad": True,
        # Restart after a crash, not after a clean exit (SIGTERM drain, `launchctl kill`).
        "KeepAlive": {"SuccessfulExit": False},
        # launchd's default of 20 s would cut the daemon's 30 s drain short.
        "ExitTimeOut": STOP_TIMEOUT_S,
        # Interactive: no background throttling of CPU/GPU work.
        "ProcessType": "Interactive",
        "WorkingDirectory": str(paths.data_dir.absolute()),
        "EnvironmentVariables": _environment(),
        "StandardOutPath": str((paths.log_dir / STDOUT_LOG).absolute()),
        "StandardErrorPath": str((paths.log_dir / STDERR_LOG).absolute()),
    }
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=False)


def _check_line(value: str) -> str:
    # A newline would end the directive and start another one.
    if "\n" in value or "\r" in value:
        raise ServiceError(f"cannot write a systemd unit for a value with a newline: {value!r}")
    return value


def _systemd_escape(value: str) -> str:
    """Escape for a quoted systemd word: C-style backslashes, `%` specifiers."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")


def _systemd_exec_word(arg: str) -> str:
    """One ExecStart= word: `$` and `%` doubled (variable and specifier expansion), quoted
    when it holds whitespace, quotes, backslashes or `;` (a word separator for commands)."""
    _check_line(arg)
    if arg and not any(c.isspace() or c in "\"'\\;" for c in arg):
        return arg.replace("%", "%%").replace("$", "$$")
    return '"' + _systemd_escape(arg).replace("$", "$$") + '"'


def _render_unit(args: list[str]) -> bytes:
    paths = default_paths()
    exec_start = " ".join(_systemd_exec_word(a) for a in args)
    # Environment= does no `$` expansion, only specifiers and C escapes inside quotes.
    env_lines = [
        f'Environment="{_systemd_escape(_check_line(f"{k}={v}"))}"'
        for k, v in _environment().items()
    ]
    # WorkingDirectory= takes the rest of the line as one path: no quoting, only specifiers.
    workdir = _check_line(str(paths.data_dir.absolute())).replace("%", "%%")
    lines = [
        f"{SYSTEMD_MARKER}; reinstall with mlxrouter rather than editing this file.",
        "[Unit]",
        "Description=mlxrouter: local MLX language models over an OpenAI-compatible API",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        # Restart after a crash, not after a clean stop.
        "Restart=on-failure",
        "RestartSec=2",
        # The daemon drains in-flight requests for up to 30 s on SIGTERM.
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        f"WorkingDirectory={workdir}",
        *env_lines,
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines).encode("utf-8")


def render(
    config_path: Path | None,
    *,
    platform: str | None = None,
    home: Path | None = None,
    executable: Path | None = None,
) -> ServiceFile:
    """The service file for this user and platform, without writing anything.

    `config_path` becomes `serve --config <absolute path>`; None leaves `--config` out, so the
    daemon reads the default config file when there is one (built-in defaults otherwise).
    `executable` defaults to `find_executable()`."""
    kind = _kind(platform)
    args = _program_arguments(config_path, executable)
    content = _render_plist(args) if kind == "launchd" else _render_unit(args)
    return ServiceFile(path=service_path(platform=platform, home=home), content=content, kind=kind)


def show(
    config_path: Path | None,
    *,
    platform: str | None = None,
    home: Path | None = None,
    executable: Path | None = None,
) -> str:
    """The text `install` would write, headed by the path it would go to; writes nothing."""
    service = render(config_path, platform=platform, home=home, executable=executable)
    return f"# {service.path}\n{service.text}"


def config_warning(config_path: Path | None) -> str | None:
    """A one-line warning when the config file the service would read does not exist, else
    None. With no `config_path` that is the default file, read at each start when present."""
    if config_path is not None:
        if config_path.expanduser().is_file():
            return None
        return (
            f"config file {config_path} does not exist; "
            "`mlxrouter serve --config` fails at every start until you create it"
        )
    default = default_paths().config_file
    if default.is_file():
        return None
    return (
        f"no config file at {default}: the service serves built-in defaults "
        "(the demo model) until you create one there"
    )


# ---- ownership ---------------------------------------------------------------------------


def is_managed(path: Path) -> bool:
    """Whether the file at `path` carries mlxrouter's mark (False when unreadable)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if path.suffix == ".plist":
        try:
            plist = plistlib.loads(data)
        except Exception:  # noqa: BLE001 - plistlib raises several types for foreign files
            return False
        return isinstance(plist, dict) and plist.get(PLIST_MARKER_KEY) is True
    return any(
        line.startswith(SYSTEMD_MARKER) for line in data.decode("utf-8", "replace").splitlines()
    )


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
    _kind(platform)  # an unsupported platform is the first thing to report
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
    kind = _kind(platform)
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
