"""The commands that talk to a running daemon (ps, load, unload) and how they find it:
--url, else $MLXROUTER_URL, else the config's host and port."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

import msgspec

from ..config import Config
from ..errors import MlxRouterError
from . import common

T = TypeVar("T")

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


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that say where the daemon is and how long to wait for it."""
    parser.add_argument("--config", metavar="FILE", help="config naming the daemon's host and port")
    parser.add_argument(
        "--url",
        help=f"the daemon's URL (default: ${URL_ENV}, else the config's host and port)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait (default 600)"
    )
    parser.set_defaults(host=None, port=None)


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


def _daemon_call(
    args: argparse.Namespace, method: str, path: str, answer: type[T], body: object = None
) -> T:
    """One request to the running daemon, at the URL `_daemon_url` picks; the answer decoded
    into the daemon's own typed shape (`mlxrouter.status`)."""
    import os

    import httpx

    from ..status import ErrorResponse

    config, config_path = common.load(args)
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
    if response.status_code >= 400:
        try:
            message = msgspec.json.decode(response.content, type=ErrorResponse).error.message
        except msgspec.ValidationError:
            message = f"the daemon answered HTTP {response.status_code}"
        raise MlxRouterError(message)
    try:
        return msgspec.json.decode(response.content, type=answer)
    except msgspec.ValidationError as exc:
        raise MlxRouterError(
            f"the daemon at {url} gave an answer this CLI cannot read: {exc}"
        ) from None


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


def cmd_ps(args: argparse.Namespace) -> int:
    from ..status import PoolStatus

    status = _daemon_call(args, "GET", "/admin/pool", PoolStatus)
    rows = [("ID", "KIND", "STATE", "SIZE", "IN FLIGHT", "LAST USED", "PINNED", "EXPIRES")]
    for e in status.entries:
        rows.append(
            (
                e.id,
                f"adapter of {e.base}" if e.base else e.kind,
                # a distributed entry: its worker group's state (starting, failed, ...)
                e.state if e.worker is None else f"{e.state} (group {e.worker.state})",
                common.human_bytes(e.bytes),
                str(e.in_flight),
                _ago(e.last_used),
                "yes" if e.pinned else "no",
                _until(e.expires_at),
            )
        )
    common.table(rows)
    budget = common.human_bytes(status.max_bytes) if status.max_bytes else "no limit"
    print(
        f"\n{len(status.entries)}/{status.max_models} loaded, "
        f"{common.human_bytes(status.used_bytes)} of {budget}; "
        f"{status.queue_depth} waiting; {status.loads} loads, {status.evictions} evictions"
    )
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    # The answer names the resolved entry (an alias resolves to its model), so compare that
    # with what the pool held before.
    from ..status import LoadAnswer, PoolStatus

    before = _daemon_call(args, "GET", "/admin/pool", PoolStatus)
    loaded_before = {e.id for e in before.entries if e.state == "loaded"}
    body: dict[str, object] = {"model": args.id, "adapter": args.adapter}
    if args.pin is not None:
        body["pin"] = args.pin
    key = _daemon_call(args, "POST", "/admin/load", LoadAnswer, body).loaded
    done = f"{key} was already loaded" if key in loaded_before else f"loaded {key}"
    print(done if args.pin is None else f"{done}, {'pinned' if args.pin else 'unpinned'}")
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    from ..status import UnloadAnswer

    body = {"model": args.id, "adapter": args.adapter}
    result = _daemon_call(args, "POST", "/admin/unload", UnloadAnswer, body)
    print(f"unloaded {args.id}" if result.unloaded else f"{args.id} was not loaded")
    return 0
