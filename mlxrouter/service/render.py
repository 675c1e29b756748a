"""Rendering the service file: a launchd plist (plistlib) or a systemd user unit (text).

Pure: it reads the environment and looks for the `mlxrouter` executable, but writes nothing.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ..paths import default_paths
from .base import (
    LABEL,
    PLIST_MARKER_KEY,
    STOP_TIMEOUT_S,
    SYSTEMD_MARKER,
    ServiceError,
    ServiceFile,
    service_kind,
    service_path,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

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

STDOUT_LOG = "mlxrouter.out.log"
STDERR_LOG = "mlxrouter.err.log"


class Where(TypedDict, total=False):
    """`render`'s keywords, for the functions that pass them on: the platform (default this
    one), the home folder and the `mlxrouter` executable (default: found)."""

    platform: str | None
    home: Path | None
    executable: Path | None


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
    kind = service_kind(platform)
    args = _program_arguments(config_path, executable)
    content = _render_plist(args) if kind == "launchd" else _render_unit(args)
    return ServiceFile(path=service_path(platform=platform, home=home), content=content, kind=kind)


def show(config_path: Path | None, **where: Unpack[Where]) -> str:
    """The text `install` would write, headed by the path it would go to; writes nothing.
    Takes `render`'s keywords."""
    service = render(config_path, **where)
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
