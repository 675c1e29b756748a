"""Headless Chromium for the dashboard's tests, driven by Selenium.

`chromium` and `chromedriver` come from the system (Debian's `chromium` and `chromium-driver`
packages, which scripts/test installs there); Selenium is pointed at them, so it never
downloads a browser. Without them the tests skip with the reason, unless
`MLXROUTER_BROWSER_TESTS=required` (set by scripts/test where it can install them): then they
fail, so a CI machine never skips them silently.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

T = TypeVar("T")

#: seconds a wait for the page gives up after: a hang guard, not a timing assert
WAIT = 60.0

__all__ = [
    "By",
    "WebElement",
    "chromium",
    "console_errors",
    "missing_browser",
    "start_chromium",
    "wait_for",
]


def _binaries() -> tuple[str | None, str | None]:
    browser = next(
        (p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None
    )
    return browser, shutil.which("chromedriver")


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    browser, driver = _binaries()
    if browser and driver:
        return None
    return "headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)"


#: how every headless Chromium here starts (the tests, and scripts/screenshots)
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # containers run tests as root, where the sandbox cannot start
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
)


def start_chromium(width: int = 1400, height: int = 1000) -> webdriver.Chrome:
    """A headless Chromium with a `width` x `height` window; the caller quits it. Raises
    RuntimeError when it is not installed, WebDriverException when it does not start."""
    reason = missing_browser()
    if reason:
        raise RuntimeError(reason)
    browser, driver = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser or ""
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium, closed afterwards; its console is readable (`console_errors`)."""
    reason = missing_browser()
    if reason:
        if os.environ.get("MLXROUTER_BROWSER_TESTS") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        driver_process = start_chromium()
    except WebDriverException as exc:
        pytest.fail(f"Chromium did not start: {exc.msg}")
    try:
        yield driver_process
    finally:
        driver_process.quit()


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The console's errors since the last call (the log is drained as it is read)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [e["message"] for e in entries if e.get("level") == "SEVERE"]


def wait_for(driver: webdriver.Chrome, check: Callable[[webdriver.Chrome], T], what: str) -> T:
    """Wait until `check(driver)` is truthy and return it; fail naming `what` after WAIT s."""
    started = time.monotonic()
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check)
    except Exception as exc:
        waited = time.monotonic() - started
        raise AssertionError(f"gave up after {waited:.0f} s waiting for {what}") from exc


def wait_shown(driver: webdriver.Chrome, element_id: str, what: str) -> WebElement:
    """Wait until the element `#element_id` is displayed and return it."""
    return wait_for(
        driver,
        lambda d: (e := d.find_element(By.ID, element_id)).is_displayed() and e,
        what,
    )
