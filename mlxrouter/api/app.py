"""The Litestar app factory. Everything the app needs comes in through `create_app`; nothing
is read from globals, so tests build apps with their own config and daemon."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig

from .. import __version__
from ..config import Config
from ..daemon import Daemon
from ..paths import default_paths
from .activity import ROUTES as ACTIVITY_ROUTES
from .anthropic import ROUTES as ANTHROPIC_ROUTES
from .embeddings import embeddings
from .errors import EXCEPTION_HANDLERS
from .guards import host_allowlist, write_timeout
from .ollama import ROUTES as OLLAMA_ROUTES
from .responses_api import ROUTES as RESPONSES_ROUTES
from .routes import ROUTES, ModelsAnswer
from .ui import OPEN_PATHS as UI_OPEN_PATHS
from .ui import OPEN_PREFIX as UI_OPEN_PREFIX
from .ui import PAGES as UI_PAGES
from .ui import SESSION_PREFIX as UI_SESSION_PREFIX
from .ui import csrf_config, has_ui_session

log = logging.getLogger(__name__)

_OPEN_PATHS = {"/", "/health", *UI_OPEN_PATHS}


def _api_key_guard(daemon: Daemon, env_key: str | None) -> Any:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], __: BaseRouteHandler) -> None:
        # Read per request: a config edited, created or deleted while running sets the key.
        api_key = daemon.config.api_key or env_key
        path = connection.url.path
        if not api_key or path in _OPEN_PATHS or path.startswith(UI_OPEN_PREFIX):
            return
        # The dashboard's scripts are logged in by cookie (CSRF-checked), on its paths only.
        if path.startswith(UI_SESSION_PREFIX) and has_ui_session(connection, api_key):
            return
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = connection.headers.get("x-api-key", "")  # Anthropic's SDK sends this
        # Constant-time compare: the key must not leak through response timing.
        if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise NotAuthorizedException(
                "Invalid or missing API key (send `Authorization: Bearer <key>` or `x-api-key`)"
            )

    return guard


def create_app(
    config: Config,
    *,
    daemon: Daemon | None = None,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    watch: bool = True,
) -> Litestar:
    """Build the app. With no `daemon`, one is made from `config` (scanning the registry),
    reloading `config_path` when it changes and keeping the command line's `overrides`."""
    the_daemon = daemon or Daemon(config, config_path=config_path, overrides=overrides, watch=watch)

    async def on_startup() -> None:
        await the_daemon.start()

    async def on_shutdown() -> None:
        await the_daemon.stop()

    listening = [] if config.host in ("0.0.0.0", "::", "") else [config.host]  # noqa: S104
    cors = CORSConfig(allow_origins=config.cors_origins) if config.cors_origins else None
    return Litestar(
        route_handlers=[
            *ROUTES,
            embeddings,
            *RESPONSES_ROUTES,
            *ANTHROPIC_ROUTES,
            *OLLAMA_ROUTES,
            *ACTIVITY_ROUTES,
            UI_PAGES,
        ],
        middleware=[
            host_allowlist([*listening, *config.allowed_hosts]),
            write_timeout(config.write_timeout),
        ],
        cors_config=cors,
        csrf_config=csrf_config(default_paths().data_dir / "ui-csrf-secret"),
        state=State({"daemon": the_daemon, "models_answer": ModelsAnswer()}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        guards=[_api_key_guard(the_daemon, os.environ.get("MLXROUTER_API_KEY"))],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        openapi_config=OpenAPIConfig(title="mlxrouter", version=__version__, path="/schema"),
        request_max_body_size=config.max_request_bytes,
        logging_config=None,  # logging is the process owner's business (server.setup_logging)
        debug=False,
    )
