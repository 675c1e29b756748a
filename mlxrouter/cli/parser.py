"""The command line: the parser of every subcommand and `main`, which runs one and turns a
domain error into one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..errors import MlxRouterError
from .client import add_client_flags, cmd_load, cmd_ps, cmd_unload
from .local import cmd_import_gguf, cmd_models, cmd_paths, cmd_serve, cmd_service

EXIT_ERROR = 1
EXIT_USAGE = 2

Command = Callable[[argparse.Namespace], int]


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
        name: str, help_: str, example: str, func: Command, description: str | None = None
    ) -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name,
            help=help_,
            description=description or help_,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=func)
        return parser

    def pool_command(
        name: str, help_: str, adapter_help: str, func: Command
    ) -> argparse.ArgumentParser:
        """`load` / `unload`: a registry id, maybe an adapter, and where the daemon is."""
        parser = command(name, help_, f"mlxrouter {name} org/model", func)
        parser.add_argument("id", help="a registry id")
        parser.add_argument("--adapter", help=adapter_help)
        add_client_flags(parser)
        return parser

    serve = command(
        "serve",
        "run the daemon",
        "mlxrouter serve --config ~/mlxrouter.yaml --port 8080",
        cmd_serve,
    )
    _add_config_flags(serve)
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--no-demo", action="store_true", help="do not prepare the demo model when no config exists"
    )

    models = command(
        "models",
        "list the models the config would serve (scans the disk; no daemon needed)",
        "mlxrouter models --config ~/mlxrouter.yaml",
        cmd_models,
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
    models.set_defaults(host=None, port=None)

    gguf = command(
        "import-gguf",
        "convert a llama-architecture GGUF file into an MLX model folder",
        "mlxrouter import-gguf ~/Downloads/model.Q4_0.gguf ~/models/my-model",
        cmd_import_gguf,
    )
    gguf.add_argument("file", metavar="FILE.gguf")
    gguf.add_argument(
        "out_dir", metavar="OUT_DIR", nargs="?", help="default: the models data folder"
    )

    ps = command("ps", "show what the running daemon has loaded", "mlxrouter ps", cmd_ps)
    add_client_flags(ps)
    load = pool_command(
        "load",
        "load a model (or adapter) in the running daemon now",
        "an adapter id to load on it",
        cmd_load,
    )
    pin = load.add_mutually_exclusive_group()
    pin.add_argument(
        "--pin",
        dest="pin",
        action="store_const",
        const=True,
        help="keep it loaded until it is unloaded or unpinned",
    )
    pin.add_argument(
        "--unpin",
        dest="pin",
        action="store_const",
        const=False,
        help="give a pinned entry its lifetime back (its ttl, else pool.idle_ttl)",
    )
    pool_command(
        "unload",
        "unload a model (or adapter) from the running daemon",
        "unload only this adapter of it",
        cmd_unload,
    )

    svc = command(
        "service",
        "install, remove or show the launchd (macOS) / systemd (Linux) login service",
        "mlxrouter service install --config ~/.config/mlxrouter/config.yaml",
        cmd_service,
    )
    svc.add_argument("action", choices=["install", "uninstall", "show"])
    svc.add_argument("--config", metavar="FILE", help="config the service runs with")
    svc.add_argument(
        "--force", action="store_true", help="replace a service file mlxrouter did not write"
    )

    command("paths", "print where mlxrouter keeps its files", "mlxrouter paths", cmd_paths)
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
