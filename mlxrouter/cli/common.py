"""What the CLI's commands share: the config they run with and plain-text tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..config import Config, load_config
from ..paths import default_paths


def config_path(arg: str | None) -> Path | None:
    """--config FILE, else the default file when it exists, else None (built-in defaults)."""
    if arg:
        return Path(arg).expanduser()
    default = default_paths().config_file
    return default if default.exists() else None


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields set on the command line; they win over the file, on reload too."""
    found: dict[str, Any] = {
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
    }
    if getattr(args, "log_level", None):
        found["log_level"] = args.log_level
    return found


def load(args: argparse.Namespace) -> tuple[Config, Path | None]:
    """The config the command runs with (file, then flags) and the file it came from."""
    path = config_path(args.config)
    config = load_config(path)
    return msgspec.structs.replace(config, **overrides(args)), path


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
