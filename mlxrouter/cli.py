"""The `mlxrouter` command: a thin shell over programmatic functions.

Each subcommand parses its flags, calls into the package, and turns a domain error into one
clear line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from . import __version__
from .config import Config, load_config
from .errors import MlxRouterError
from .paths import default_paths

log = logging.getLogger("mlxrouter")

EXIT_ERROR = 1
EXIT_USAGE = 2


def _config_path(arg: str | None) -> Path | None:
    """--config FILE, else the default file when it exists, else None (built-in defaults)."""
    if arg:
        return Path(arg).expanduser()
    default = default_paths().config_file
    return default if default.exists() else None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields set on the command line; they win over the file, on reload too."""
    overrides: dict[str, Any] = {
        k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None
    }
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    return overrides


def _load(args: argparse.Namespace) -> tuple[Config, Path | None]:
    path = _config_path(args.config)
    config = load_config(path)
    return msgspec.structs.replace(config, **_overrides(args)), path


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


# ---- commands -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .demo import DEMO_MODEL_ID, ensure_demo_model
    from .server import run, setup_logging

    config, path = _load(args)
    overrides = _overrides(args)
    setup_logging(config.log_level)
    if path is None and not args.no_demo:
        # No user config: serve the demo model, preparing it once if needed.
        models_dir = default_paths().models_dir
        _with_progress(
            "Preparing the demo model", lambda p: ensure_demo_model(models_dir, progress=p)
        )
        if config.default_model is None:
            overrides["default_model"] = DEMO_MODEL_ID
            config = msgspec.structs.replace(config, default_model=DEMO_MODEL_ID)
    return run(config, config_path=path, overrides=overrides)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import build_registry

    config, _ = _load(args)
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
                _human_bytes(found.size_bytes),
                entry.base or "",
            )
        )
    rows += [
        (alias, "alias", "config", "", "", target) for alias, target in registry.aliases.items()
    ]
    _table(rows)
    if len(rows) == 1:
        print("(no models found: see `mlxrouter paths` and the `model_dirs` config key)")
    for problem in registry.problems:
        print(f"note: {problem}", file=sys.stderr)
    return 0


def _served_id(folder: Path) -> str | None:
    """The id the registry gives `folder`: its path below a scanned model folder, one level
    (`name`) or two (`org/name`) deep; None when no scanned folder holds it."""
    try:
        config = load_config(_config_path(None))
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
    from .gguf import convert_gguf, model_id_for

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


# ---- talking to the running daemon ----------------------------------------------------------


#: Where the client commands find the daemon when --url is not given.
URL_ENV = "MLXROUTER_URL"


def connect_url(host: str, port: int) -> str:
    """The URL to reach a daemon listening on host:port; a wildcard address means this
    machine. Also used by `serve`'s ready line (this module imports nothing heavy)."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - not binding, naming the local end
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _daemon_url(args: argparse.Namespace, config: Config, path: Path | None) -> tuple[str, str]:
    """(base URL, where it came from): --url, else $MLXROUTER_URL, else the config's host and
    port. A scheme-less URL gets http://; a trailing /v1 (the OpenAI base URL) is dropped."""
    import os

    if args.url:
        url, source = args.url, "--url"
    elif os.environ.get(URL_ENV):
        url, source = os.environ[URL_ENV], URL_ENV
    else:
        url = connect_url(config.host, config.port)
        source = f"the config file {path}" if path else "the default host and port"
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    url = url.removesuffix("/v1")
    return url, source


def _daemon_call(args: argparse.Namespace, method: str, path: str, body: object = None) -> Any:
    """One request to the running daemon, at the URL `_daemon_url` picks."""
    import os

    import httpx

    config, config_path = _load(args)
    url, source = _daemon_url(args, config, config_path)
    key = config.api_key or os.environ.get("MLXROUTER_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, url + path, json=body, headers=headers, timeout=args.timeout
        )
    except httpx.ConnectError:
        raise MlxRouterError(
            f"no mlxrouter daemon answers at {url} (from {source}); start one with "
            f"`mlxrouter serve`, or point to it with --url URL or {URL_ENV}=URL"
        ) from None
    except httpx.HTTPError as exc:
        raise MlxRouterError(
            f"cannot reach the daemon at {url} (from {source}): {exc or type(exc).__name__}; "
            f"point elsewhere with --url URL or {URL_ENV}=URL"
        ) from None
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code >= 400:
        message = data.get("error", {}).get("message") if isinstance(data, dict) else None
        raise MlxRouterError(message or f"the daemon answered HTTP {response.status_code}")
    return data


def _ago(timestamp: float | None) -> str:
    import time

    if timestamp is None:
        return "-"
    seconds = max(0, int(time.time() - timestamp))
    return f"{seconds}s ago" if seconds < 120 else f"{seconds // 60}m ago"


def _until(timestamp: float | None) -> str:
    import time

    if timestamp is None:
        return "never"
    return f"in {max(0, int(timestamp - time.time()))}s"


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def cmd_ps(args: argparse.Namespace) -> int:
    status = _daemon_call(args, "GET", "/admin/pool")
    rows = [("ID", "KIND", "STATE", "SIZE", "IN FLIGHT", "LAST USED", "PINNED", "EXPIRES")]
    for e in status["entries"]:
        rows.append(
            (
                e["id"],
                e["kind"] if not e["base"] else f"adapter of {e['base']}",
                e["state"],
                _human_bytes(e["bytes"]),
                str(e["in_flight"]),
                _ago(e["last_used"]),
                "yes" if e["pinned"] else "no",
                _until(e["expires_at"]),
            )
        )
    _table(rows)
    budget = _human_bytes(status["max_bytes"]) if status["max_bytes"] else "no limit"
    print(
        f"\n{len(status['entries'])}/{status['max_models']} loaded, "
        f"{_human_bytes(status['used_bytes'])} of {budget}; "
        f"{status['queue_depth']} waiting; {status['loads']} loads, {status['evictions']} evictions"
    )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    # The answer names the resolved entry (an alias resolves to its model), so compare that
    # with what the pool held before.
    before = _daemon_call(args, "GET", "/admin/pool")
    loaded_before = {e["id"] for e in before["entries"] if e["state"] == "loaded"}
    result = _daemon_call(args, "POST", "/admin/load", {"model": args.id, "adapter": args.adapter})
    key = result["loaded"]
    print(f"{key} was already loaded" if key in loaded_before else f"loaded {key}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    result = _daemon_call(
        args, "POST", "/admin/unload", {"model": args.id, "adapter": args.adapter}
    )
    print(f"unloaded {args.id}" if result["unloaded"] else f"{args.id} was not loaded")
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    from . import service

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
    from .paths import hf_hub_cache

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


# ---- parser -------------------------------------------------------------------------------


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="config file (default: see `mlxrouter paths`)"
    )
    parser.add_argument("--host", help="listen address (overrides `host`)")
    parser.add_argument("--port", type=int, help="listen port (overrides `port`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlxrouter",
        description="Serve local MLX language models over an OpenAI-compatible API.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mlxrouter serve --port 8080\n  mlxrouter models",
    )
    parser.add_argument("--version", action="version", version=f"mlxrouter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help_: str, example: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=description or help_,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    serve = command(
        "serve", "run the daemon", "mlxrouter serve --config ~/mlxrouter.yaml --port 8080"
    )
    _add_config_flags(serve)
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--no-demo", action="store_true", help="do not prepare the demo model when no config exists"
    )
    serve.set_defaults(func=cmd_serve)

    models = command(
        "models",
        "list the models the config would serve (scans the disk; no daemon needed)",
        "mlxrouter models --config ~/mlxrouter.yaml",
        description=(
            "List the models, adapters and aliases the config would serve, by scanning its\n"
            "sources now: `model_dirs`, the data folder's models/, the HF cache (when\n"
            "`hf_cache` is on) and `models:` entries. No daemon is needed or asked; see\n"
            "`mlxrouter ps` for what a running daemon has loaded."
        ),
    )
    models.add_argument(
        "--config",
        metavar="FILE",
        help="config whose sources to scan (default: see `mlxrouter paths`)",
    )
    # Host and port do not change what is found: no such flags here.
    models.set_defaults(func=cmd_models, host=None, port=None)

    gguf = command(
        "import-gguf",
        "convert a llama-architecture GGUF file into an MLX model folder",
        "mlxrouter import-gguf ~/Downloads/model.Q4_0.gguf ~/models/my-model",
    )
    gguf.add_argument("file", metavar="FILE.gguf")
    gguf.add_argument(
        "out_dir", metavar="OUT_DIR", nargs="?", help="default: the models data folder"
    )
    gguf.set_defaults(func=cmd_import_gguf)

    def client_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--config", metavar="FILE", help="config naming the daemon's host and port"
        )
        parser.add_argument(
            "--url",
            help=f"the daemon's URL (default: ${URL_ENV}, else the config's host and port)",
        )
        parser.add_argument(
            "--timeout", type=float, default=600.0, help="seconds to wait (default 600)"
        )
        parser.set_defaults(host=None, port=None)

    ps = command("ps", "show what the running daemon has loaded", "mlxrouter ps")
    client_flags(ps)
    ps.set_defaults(func=cmd_ps)

    load = command(
        "load", "load a model (or adapter) in the running daemon now", "mlxrouter load org/model"
    )
    load.add_argument("id", help="a registry id")
    load.add_argument("--adapter", help="an adapter id to load on it")
    client_flags(load)
    load.set_defaults(func=cmd_load)

    unload = command(
        "unload",
        "unload a model (or adapter) from the running daemon",
        "mlxrouter unload org/model",
    )
    unload.add_argument("id", help="a registry id")
    unload.add_argument("--adapter", help="unload only this adapter of it")
    client_flags(unload)
    unload.set_defaults(func=cmd_unload)

    svc = command(
        "service",
        "install, remove or show the launchd (macOS) / systemd (Linux) login service",
        "mlxrouter service install --config ~/.config/mlxrouter/config.yaml",
    )
    svc.add_argument("action", choices=["install", "uninstall", "show"])
    svc.add_argument("--config", metavar="FILE", help="config the service runs with")
    svc.add_argument(
        "--force", action="store_true", help="replace a service file mlxrouter did not write"
    )
    svc.set_defaults(func=cmd_service)

    paths = command("paths", "print where mlxrouter keeps its files", "mlxrouter paths")
    paths.set_defaults(func=cmd_paths)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except MlxRouterError as exc:
        print(f"mlxrouter: error: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
