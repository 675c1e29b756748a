"""What the service files are: their names and marks, the platform's service manager, where
the file goes, and whether a file there is ours. Reads at most that one file."""

from __future__ import annotations

import os
import plistlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import MlxRouterError

#: The launchd label, also the plist's file name.
LABEL = "io.github.mlxrouter"
#: The systemd user unit's name.
UNIT_NAME = "mlxrouter.service"

#: First line of every unit we write; its presence means "ours, safe to replace or remove".
SYSTEMD_MARKER = "# Written by mlxrouter"
#: A plist key launchd ignores; `True` means "ours, safe to replace or remove".
PLIST_MARKER_KEY = "MlxrouterManaged"

#: Seconds the service manager waits for a clean stop before killing: the daemon drains
#: in-flight requests for up to 30 s on SIGTERM.
STOP_TIMEOUT_S = 45

UNSUPPORTED = "service install supports macOS (launchd) and Linux (systemd)"

Kind = Literal["launchd", "systemd"]


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


def service_kind(platform: str | None) -> Kind:
    """The service manager of `platform` (default: this one); ServiceError when none."""
    name = sys.platform if platform is None else platform
    if name == "darwin":
        return "launchd"
    if name.startswith("linux"):
        return "systemd"
    raise ServiceError(UNSUPPORTED)


def service_path(*, platform: str | None = None, home: Path | None = None) -> Path:
    """Where the service file lives for this user (pure)."""
    home = Path.home() if home is None else home
    if service_kind(platform) == "launchd":
        return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative value.
    config_home = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
    return config_home / "systemd" / "user" / UNIT_NAME


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
