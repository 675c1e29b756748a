"""The commands that work on this machine alone, no daemon asked: serve, models, import-gguf,
service and paths."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

from ..config import Config, load_config
from ..errors import MlxRouterError
from ..paths import default_paths
from . import common


class _Progress:
    """A tqdm bar driven by (stage, fraction) callbacks, one pass of the bar per stage;
    quiet when stderr is not a terminal."""

    def __init__(self, title: str) -> None:
        from tqdm import tqdm

        self._title = title
        self._stage = ""
        self._bar = tqdm(total=100, desc=title, unit="%", disable=None, leave=False)

    def __call__(self, stage: str, fraction: float) -> None:
        if stage != self._stage:
            self._stage = stage
            if self._bar.disable:
                # No bar off a terminal (a log, a service): one line per stage instead.
                print(f"mlxrouter: {self._title}: {stage}", file=sys.stderr, flush=True)
            self._bar.reset()
            self._bar.set_description(f"{self._title}: {stage}")
        self._bar.update(max(0, round(fraction * 100) - self._bar.n))

    def close(self) -> None:
        self._bar.close()


def _with_progress(title: str, work: Callable[[Callable[[str, float], None]], Path]) -> Path:
    bar = _Progress(title)
    try:
        return work(bar)
    finally:
        bar.close()


def cmd_serve(args: argparse.Namespace) -> int:
    from ..demo import DEMO_MODEL_ID, ensure_demo_embedding_model, ensure_demo_model
    from ..server import run, setup_logging

    config, path = common.load(args)
    overrides = common.overrides(args)
    setup_logging(config.log_level)
    if path is None and not args.no_demo:
        # No user config: serve the demo model, preparing it once if needed.
        models_dir = default_paths().models_dir
        _with_progress(
            "Preparing the demo model", lambda p: ensure_demo_model(models_dir, progress=p)
        )
        ensure_demo_embedding_model(models_dir)  # served beside it: all-MiniLM-L6-v2
        if config.default_model is None:
            overrides["default_model"] = DEMO_MODEL_ID
            config = msgspec.structs.replace(config, default_model=DEMO_MODEL_ID)
    return run(config, config_path=path, overrides=overrides)


def cmd_models(args: argparse.Namespace) -> int:
    from ..registry import build_registry

    config, _ = common.load(args)
    registry = build_registry(config)
    rows = [("ID", "KIND", "SOURCE", "CONTEXT", "SIZE", "BASE")]
    for entry in registry:
        found = entry.found
        rows.append(
            (
                entry.id,
                entry.kind,
                entry.source,
                str(found.context_length or "-"),
                common.human_bytes(found.size_bytes),
                entry.base or "",
            )
        )
    rows += [
        (alias, "alias", "config", "", "", target) for alias, target in registry.aliases.items()
    ]
    common.table(rows)
    if len(rows) == 1:
        print("(no models found: see `mlxrouter paths` and the `model_dirs` config key)")
    for problem in registry.problems:
        print(f"note: {problem}", file=sys.stderr)
    return 0


def _served_id(folder: Path) -> str | None:
    """The id the registry gives `folder`: its path below a scanned model folder, one level
    (`name`) or two (`org/name`) deep; None when no scanned folder holds it."""
    try:
        config = load_config(common.config_path(None))
    except MlxRouterError:
        config = Config()  # a broken config file must not hide a finished conversion
    for root in config.model_dir_paths():
        try:
            parts = folder.resolve().relative_to(root.expanduser().resolve()).parts
        except ValueError:
            continue
        if 1 <= len(parts) <= 2:
            return "/".join(parts)
    return None


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from ..gguf import convert_gguf, model_id_for

    source = Path(args.file).expanduser()
    if not source.is_file():
        raise MlxRouterError(f"no such file: {args.file}")
    if args.out_dir:
        out = Path(args.out_dir).expanduser()
    else:
        out = default_paths().models_dir / model_id_for(source.name)
    result = _with_progress(
        f"Converting {source.name}", lambda p: convert_gguf(source, out, progress=p)
    )
    served = _served_id(result)
    if served is None:
        print(
            f"converted to {result}; to serve it, add its parent folder to `model_dirs`"
            " or give it a `models:` entry"
        )
    else:
        print(f"converted to {result}; served as `{served}`")
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from .. import service

    config = Path(args.config).expanduser().resolve() if args.config else None
    if args.action == "uninstall":
        removed = service.uninstall(force=args.force)
        print(f"stopped and removed: {removed}" if removed else "no mlxrouter service installed")
        return 0
    if args.action == "show":
        print(service.show(config))
    else:
        installed = service.install(config, force=args.force)
        print(f"installed and started: {installed.path}")
    warning = service.config_warning(config)
    if warning:
        print(f"mlxrouter: warning: {warning}", file=sys.stderr)
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    from ..paths import hf_hub_cache

    paths = default_paths()
    for name, value in (
        ("config", paths.config_file),
        ("data", paths.data_dir),
        ("models", paths.models_dir),
        ("logs", paths.log_dir),
        ("cache", paths.cache_dir),
        ("hf_cache", hf_hub_cache()),
    ):
        print(f"{name:9} {value}")
    return 0
