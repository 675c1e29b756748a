"""The dashboard's login in a real browser (headless Chromium) against a real daemon with an
`api_key`: before the key the browser gets the login page and no data (`/ui/api` answers
401), a wrong key is told, the right one opens the dashboard and its data, the session cookie
is out of the page's scripts' reach, and logging out ends it. Over HTTP: the Host allowlist
guards `/ui` as it guards the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import By, chromium, console_errors, wait_for, wait_shown
from conftest import running_daemon

from mlxrouter.api.ui import SESSION_COOKIE

KEY = "sk-browser-test"
Driver = Any  # selenium's webdriver.Chrome


@pytest.fixture(scope="module")
def url(tiny_models: Path) -> Iterator[str]:
    """One daemon with a key for the module: each test's browser starts logged out."""
    yaml = f"hf_cache: false\nmodel_dirs: [{tiny_models}]\napi_key: {KEY}\n"
    with running_daemon(yaml) as (base, _):
        yield base


def page_fetch(driver: Driver, path: str) -> Any:
    """The status of a GET of `path` made by the page's own script (with its cookies)."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then((r) => done(r.status), (e) => done(String(e)));",
        path,
    )


def script_errors(driver: Driver) -> list[str]:
    """The console's errors but the network's own line for a 401 the test asked for (Chromium
    logs every refused request; the page's scripts logged nothing)."""
    return [e for e in console_errors(driver) if "status of 401" not in e]


def submit_key(driver: Driver, key: str) -> None:
    field = wait_for(driver, lambda d: d.find_element(By.ID, "key"), "the key field")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()


def on_dashboard(driver: Driver) -> bool:
    return bool(driver.current_url.split("#")[0].endswith("/ui"))


def test_before_the_key_the_browser_gets_the_login_page_and_no_data(url: str) -> None:
    with chromium() as driver:
        driver.get(url + "/ui")
        wait_for(driver, lambda d: d.current_url.endswith("/ui/login"), "the login page")
        wait_for(driver, lambda d: d.find_element(By.ID, "key").is_displayed(), "the key field")
        page = driver.page_source
        assert "tiny-a" not in page and "tiny-b" not in page
        for path in (
            "/ui/api/v1/models",
            "/ui/api/admin/pool",
            "/ui/api/admin/activity",
            "/ui/api/health",
        ):
            assert page_fetch(driver, path) == 401, path
        assert driver.get_cookie(SESSION_COOKIE) is None
        assert script_errors(driver) == []


def test_a_wrong_key_is_told_and_the_right_one_opens_the_dashboard(url: str) -> None:
    with chromium() as driver:
        driver.get(url + "/ui")
        submit_key(driver, "not-the-key")
        error = wait_shown(driver, "login-error", "the wrong key's message")
        assert "Wrong API key" in error.text
        assert driver.current_url.endswith("/ui/login")
        assert driver.get_cookie(SESSION_COOKIE) is None

        submit_key(driver, KEY)
        wait_for(driver, on_dashboard, "the dashboard")
        wait_for(
            driver,
            lambda d: d.find_element(By.ID, "feed-state").text == "live",
            "the live event stream",
        )
        driver.find_element(By.CSS_SELECTOR, '#tabs a[data-tab="playground"]').click()
        wait_for(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, '#pg-model option[value="tiny-a"]'),
            "the models, read through /ui/api",
        )
        assert page_fetch(driver, "/ui/api/admin/pool") == 200
        cookie = driver.get_cookie(SESSION_COOKIE)
        assert cookie is not None
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert KEY not in cookie["value"]
        assert SESSION_COOKIE not in driver.execute_script("return document.cookie")
        assert KEY not in driver.current_url
        assert script_errors(driver) == []


def test_logging_out_returns_to_the_login_page(url: str) -> None:
    with chromium() as driver:
        driver.get(url + "/ui")
        submit_key(driver, KEY)
        wait_for(driver, on_dashboard, "the dashboard")
        logout = wait_shown(driver, "logout", "the log-out button")
        logout.click()
        wait_for(driver, lambda d: d.current_url.endswith("/ui/login"), "the login page")
        assert driver.get_cookie(SESSION_COOKIE) is None
        assert page_fetch(driver, "/ui/api/admin/pool") == 401
        driver.get(url + "/ui")
        wait_for(driver, lambda d: d.current_url.endswith("/ui/login"), "the login page again")
        assert script_errors(driver) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ui"),
        ("GET", "/ui/login"),
        ("GET", "/ui/session"),
        ("GET", "/ui/static/js/core.js"),
        ("GET", "/ui/api/admin/pool"),
        ("POST", "/ui/login"),
        ("POST", "/ui/api/v1/chat/completions"),
    ],
)
def test_a_foreign_host_header_is_refused_on_the_dashboard(
    url: str, method: str, path: str
) -> None:
    """A DNS-rebinding page reaches the daemon under its own name: the Host allowlist answers
    403 before the dashboard (or its login) is served."""
    body = {"key": KEY} if method == "POST" else None
    with httpx.Client(base_url=url, timeout=30) as http:
        refused = http.request(method, path, headers={"host": "evil.example"}, json=body)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "host_not_allowed"  # the allowlist's, not the CSRF check's 403
        assert SESSION_COOKIE not in refused.headers.get("set-cookie", "")
        # the daemon's own name still works
        assert http.get("/ui/login").status_code == 200
