"""The dashboard at `/ui`: its pages, its login, and `/ui/api`, where the page's scripts reach
the daemon.

The pages are static files from the package (`mlxrouter/ui/`): they hold no data, and read
everything through `/ui/api`, which registers the very handlers of the admin and OpenAI routes
a second time (no second pipeline). `/ui/api` differs from the routes it repeats in two ways:
the API-key guard also accepts the dashboard's session cookie there (`has_ui_session`), and
Litestar's CSRF check covers it (`csrf_config`), so a page on another site cannot make a
logged-in browser act. With `ui` off everything here answers 404, read per request like every
live setting.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, Router, get, post
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, State
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import JSONBody
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from ..daemon import Daemon
from .activity import admin_activity, admin_events
from .embeddings import embeddings
from .routes import (
    admin_load,
    admin_pool,
    admin_unload,
    chat_completions,
    get_model,
    health,
    list_models,
)

#: the login's cookie: HttpOnly (scripts never see it) and sent only to the dashboard's paths
SESSION_COOKIE = "mlxrouter_session"
#: Litestar's CSRF cookie (the page's script copies it into the header below)
CSRF_COOKIE = "mlxrouter_csrf"
CSRF_HEADER = "x-csrftoken"
#: how long a login lasts (a changed `api_key` ends every login at once)
SESSION_SECONDS = 30 * 24 * 3600

STATIC = Path(str(resources.files("mlxrouter") / "ui"))


def session_token(api_key: str) -> str:
    """The cookie's value for a key: derived from it, so a changed key ends every login, and
    the key itself is never stored in the browser."""
    return hmac.new(api_key.encode(), b"mlxrouter-ui-session", hashlib.sha256).hexdigest()


def has_ui_session(connection: ASGIConnection[Any, Any, Any, Any], api_key: str) -> bool:
    """The request carries a valid dashboard login (only ever asked for `/ui` paths)."""
    cookie = connection.cookies.get(SESSION_COOKIE, "")
    return hmac.compare_digest(cookie.encode(), session_token(api_key).encode())


def csrf_config(secret_file: Path) -> CSRFConfig:
    """Litestar's CSRF check (double-submit cookie) on the dashboard's paths only: API
    clients send no cookies and no CSRF header. The secret lives in a file of the data folder,
    so a browser's token survives a daemon restart."""
    return CSRFConfig(
        secret=_csrf_secret(secret_file),
        cookie_name=CSRF_COOKIE,
        header_name=CSRF_HEADER,
        cookie_samesite="strict",
        # Every path but /ui's (a pattern that matches a path exempts it). `/` itself is
        # exempt by its handlers' opt: a pattern matching it would read as "exempt all".
        exclude=[r"^/(?!ui(?:/|$))."],
    )


def _csrf_secret(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    # created 0600 and written once; a second daemon racing here reads the winner's next time
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret)
    return secret


def _daemon(state: State) -> Daemon:
    daemon: Daemon = state.daemon
    return daemon


def ui_enabled(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: with `ui` off the dashboard's paths do not exist."""
    if not _daemon(connection.app.state).config.ui_config.enabled:
        raise NotFoundException


def _api_key(state: State) -> str | None:
    daemon = _daemon(state)
    return daemon.config.api_key or os.environ.get("MLXROUTER_API_KEY")


@cache
def _page(name: str) -> bytes:
    return (STATIC / name).read_bytes()


_NO_STORE = {"Cache-Control": "no-store"}


@get(["/ui", "/ui/"], include_in_schema=False)
async def dashboard(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """The dashboard's page, or the login page while a key is set and not given."""
    key = _api_key(state)
    if key and not has_ui_session(request, key):
        return Redirect("/ui/login", status_code=303)
    return Response(_page("index.html"), media_type=MediaType.HTML, headers=_NO_STORE)


@get("/ui/login", include_in_schema=False)
async def login_page() -> Response[bytes]:
    return Response(_page("login.html"), media_type=MediaType.HTML, headers=_NO_STORE)


class Session(msgspec.Struct, kw_only=True):
    """`GET /ui/session`: whether this daemon asks for a key, and whether this browser gave it."""

    login_required: bool
    logged_in: bool


@get("/ui/session", include_in_schema=False)
async def session(request: Request[Any, Any, Any], state: State) -> Session:
    key = _api_key(state)
    return Session(login_required=bool(key), logged_in=not key or has_ui_session(request, key))


class Login(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /ui/login`."""

    key: str


@post("/ui/login", status_code=204, include_in_schema=False)
async def login(
    request: Request[Any, Any, Any], state: State, data: JSONBody[Login]
) -> Response[None]:
    """Check the key (constant time) and set the session cookie; 401 for a wrong key."""
    key = _api_key(state)
    if key and not hmac.compare_digest(data.key.encode(), key.encode()):
        raise NotAuthorizedException("Wrong API key")
    cookies = []
    if key:
        cookies.append(_session_cookie(request, session_token(key), SESSION_SECONDS))
    return Response(None, status_code=204, cookies=cookies)


@post("/ui/logout", status_code=204, include_in_schema=False)
async def logout(request: Request[Any, Any, Any]) -> Response[None]:
    return Response(None, status_code=204, cookies=[_session_cookie(request, "", 0)])


def _session_cookie(request: Request[Any, Any, Any], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path="/ui",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


#: what the dashboard's scripts may call, under /ui/api: the same handlers as the API's
API = Router(
    "/ui/api",
    route_handlers=[
        admin_pool,
        admin_load,
        admin_unload,
        admin_activity,
        admin_events,
        list_models,
        get_model,
        health,
        chat_completions,
        embeddings,
    ],
    include_in_schema=False,
)

PAGES = Router(
    "/",
    route_handlers=[
        dashboard,
        login_page,
        session,
        login,
        logout,
        API,
        create_static_files_router("/ui/static", [STATIC], include_in_schema=False),
    ],
    guards=[ui_enabled],
    include_in_schema=False,
)

#: paths the API-key guard lets through: they hold no data, or check the key themselves
OPEN_PATHS = frozenset({"/ui", "/ui/", "/ui/login", "/ui/logout", "/ui/session"})
OPEN_PREFIX = "/ui/static/"
SESSION_PREFIX = "/ui/api/"
