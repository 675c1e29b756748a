"""Install mlxrouter as a login service: a launchd LaunchAgent on macOS, a systemd user unit
on Linux.

`base` names the files and tells ours from others'; `render` builds a file's bytes and is pure
(`render`, `show`: they read the environment and look for the `mlxrouter` executable, but
write nothing); `install` writes or removes the file and drives `launchctl` /
`systemctl --user` through a replaceable runner.
"""

from .base import (
    LABEL,
    PLIST_MARKER_KEY,
    STOP_TIMEOUT_S,
    SYSTEMD_MARKER,
    UNIT_NAME,
    UNSUPPORTED,
    Kind,
    ServiceError,
    ServiceFile,
    is_managed,
    service_kind,
    service_path,
)
from .install import COMMAND_TIMEOUT_S, Runner, install, uninstall
from .render import (
    ENV_VARS,
    STDERR_LOG,
    STDOUT_LOG,
    Where,
    config_warning,
    find_executable,
    render,
    show,
)

__all__ = [
    "COMMAND_TIMEOUT_S",
    "ENV_VARS",
    "LABEL",
    "PLIST_MARKER_KEY",
    "STDERR_LOG",
    "STDOUT_LOG",
    "STOP_TIMEOUT_S",
    "SYSTEMD_MARKER",
    "UNIT_NAME",
    "UNSUPPORTED",
    "Kind",
    "Runner",
    "ServiceError",
    "ServiceFile",
    "Where",
    "config_warning",
    "find_executable",
    "install",
    "is_managed",
    "render",
    "service_kind",
    "service_path",
    "show",
    "uninstall",
]
