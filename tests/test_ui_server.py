"""The dashboard's server side over HTTP against a real daemon on loopback (the browser tests
drive the pages themselves): its files, `GET /` for browsers, the login and its cookie, the
CSRF check on `/ui`'s state-changing calls (and on nothing else), `/ui/api` repeating the API's
handlers, and `ui: false`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import running_daemon

from mlxrouter.api.ui import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, session_token

KEY = "sk-ui-test"


def config(models: Path, extra: str = "") -> str:
    return f"hf_cache: false\nmodel_dirs: [{models}]\n{extra}"


def csrf(http: httpx.Client) -> dict[str, str]:
    """Fetch a page (it sets the CSRF cookie) and return the header that echoes it."""
    http.get("/ui/login")
    return {CSRF_HEADER: http.cookies[CSRF_COOKIE]}


def test_the_page_and_its_files_are_served_from_the_package(tiny_models: Path) -> None:
    with running_daemon(config(tiny_models)) as (url, _), httpx.Client(base_url=url) as http:
        page = http.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/ui/static/js/core.js">' in page.text
        assert "cdn" not in page.text.lower()
        script = http.get("/ui/static/js/core.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]
        for tab in ("overview", "models", "activity", "logs", "playground"):
            assert http.get(f"/ui/static/js/tabs/{tab}.js").status_code == 200
        assert http.get("/ui/static/js/nothing.js").status_code == 404
        assert http.get("/ui/static/../../pyproject.toml").status_code == 404


def test_a_browser_at_the_root_goes_to_the_dashboard_and_clients_get_json(
    tiny_models: Path,
) -> None:
    with running_daemon(config(tiny_models)) as (url, _), httpx.Client(base_url=url) as http:
        browser = http.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert browser.status_code == 302
        assert browser.headers["location"] == "/ui"
        client = http.get("/")
        assert client.status_code == 200
        assert client.json()["name"] == "mlxrouter"


def test_ui_api_repeats_the_admin_and_model_routes(tiny_models: Path) -> None:
    with running_daemon(config(tiny_models)) as (url, _), httpx.Client(base_url=url) as http:
        assert http.get("/ui/api/admin/pool").json() == http.get("/admin/pool").json()
        ids = [m["id"] for m in http.get("/ui/api/v1/models").json()["data"]]
        assert "tiny-a" in ids
        assert http.get("/ui/api/admin/activity").status_code == 200


def test_ui_posts_need_the_csrf_token_and_api_posts_do_not(tiny_models: Path) -> None:
    with running_daemon(config(tiny_models)) as (url, _), httpx.Client(base_url=url) as http:
        body = {"model": "tiny-a"}
        refused = http.post("/ui/api/admin/load", json=body)
        assert refused.status_code == 403
        assert "error" in refused.json()
        assert http.get("/admin/pool").json()["entries"] == []
        loaded = http.post("/ui/api/admin/load", json=body, headers=csrf(http))
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["loaded"] == "tiny-a"
        # The API itself: no cookie, no token, as before.
        with httpx.Client(base_url=url) as api:
            assert api.post("/admin/unload", json=body).status_code == 200


def test_with_an_api_key_the_dashboard_shows_only_its_login_until_the_key_is_given(
    tiny_models: Path,
) -> None:
    yaml = config(tiny_models, f"api_key: {KEY}\n")
    with running_daemon(yaml) as (url, _), httpx.Client(base_url=url) as http:
        page = http.get("/ui")
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/login"
        login_page = http.get("/ui/login")
        assert login_page.status_code == 200
        assert "API key" in login_page.text
        assert KEY not in login_page.text
        assert http.get("/ui/session").json() == {"login_required": True, "logged_in": False}
        for path in ("/ui/api/admin/pool", "/ui/api/admin/activity", "/ui/api/v1/models"):
            assert http.get(path).status_code == 401, path
        token = {CSRF_HEADER: http.cookies[CSRF_COOKIE]}

        wrong = http.post("/ui/login", json={"key": "nope"}, headers=token)
        assert wrong.status_code == 401
        assert SESSION_COOKIE not in wrong.cookies
        assert http.post("/ui/login", json={"key": KEY}).status_code == 403  # no CSRF token

        right = http.post("/ui/login", json={"key": KEY}, headers=token)
        assert right.status_code == 204
        set_cookie = right.headers["set-cookie"]
        assert f"{SESSION_COOKIE}={session_token(KEY)}" in set_cookie
        assert KEY not in set_cookie
        assert "HttpOnly" in set_cookie
        assert "samesite=strict" in set_cookie.lower()
        assert "Path=/ui" in set_cookie
        assert http.get("/ui").status_code == 200
        assert http.get("/ui/api/admin/pool").status_code == 200
        assert http.get("/ui/session").json() == {"login_required": True, "logged_in": True}
        # The cookie opens the dashboard's paths only, never the API's own.
        assert http.get("/admin/pool").status_code == 401

        assert http.post("/ui/logout", headers=token).status_code == 204
        assert http.get("/ui/api/admin/pool").status_code == 401


def test_a_changed_key_ends_every_login(tmp_path: Path, tiny_models: Path) -> None:
    cookie = {SESSION_COOKIE: session_token("old-key")}
    with (
        running_daemon(config(tiny_models, "api_key: new-key\n")) as (url, _),
        httpx.Client(base_url=url, cookies=cookie) as http,
    ):
        assert http.get("/ui/api/admin/pool").status_code == 401
        assert http.get("/ui").status_code == 303


@pytest.mark.parametrize(
    "path", ["/ui", "/ui/login", "/ui/static/js/core.js", "/ui/api/admin/pool"]
)
def test_ui_false_turns_every_dashboard_path_off(tiny_models: Path, path: str) -> None:
    with (
        running_daemon(config(tiny_models, "ui: false\n")) as (url, _),
        httpx.Client(base_url=url) as http,
    ):
        answer = http.get(path)
        assert answer.status_code == 404
        assert "error" in answer.json()
        assert http.get("/", headers={"accept": "text/html"}).status_code == 200
