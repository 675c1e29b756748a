"""The dashboard's Overview, Models, Activity and Logs tabs in a real browser (headless
Chromium) against a real daemon with tiny models (the demo model where a request must last):
what each shows, live, without a reload, and what its buttons do. Every test ends with the
browser's console free of errors, but for the network's line of an answer the test expects to
be refused."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from browser import By, WebElement, chromium, console_errors, wait_for
from conftest import running_daemon
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import Select

from mlxrouter.daemon import Daemon
from mlxrouter.demo import DEMO_MODEL_ID


def config(models: Path, extra: str = "") -> str:
    return f"hf_cache: false\nmodel_dirs: [{models}]\n{extra}"


def open_tab(driver: webdriver.Chrome, url: str, app: Any, tab: str) -> None:
    """Open the dashboard at `tab` and wait until the daemon has the page's event
    subscription (the browser calls the stream open at its headers, a moment before)."""
    daemon: Daemon = app.state.daemon
    driver.get(f"{url}/ui#{tab}")
    wait_for(driver, lambda d: d.find_element(By.ID, "feed-state").text == "live", "the feed")
    wait_for(driver, lambda _: daemon.activity.subscribers > 0, "the page's subscription")


def open_overview(driver: webdriver.Chrome, url: str, app: Any) -> str:
    """Open the Overview and return its budget line once the pool's figures are in."""
    open_tab(driver, url, app, "overview")
    wait_for(driver, lambda d: " of " in d.find_element(By.ID, "budget-text").text, "the pool")
    return str(driver.find_element(By.ID, "budget-text").text)


def switch(driver: webdriver.Chrome, tab: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#tabs a[data-tab="{tab}"]').click()
    wait_for(driver, lambda d: d.find_element(By.ID, "view").get_attribute("data-tab") == tab, tab)


def row(driver: webdriver.Chrome, table: str, model: str) -> WebElement | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'#{table} tr[data-model="{model}"]')
    return found[0] if found else None


def text_in(driver: webdriver.Chrome, table: str, model: str, selector: str) -> str | None:
    """The text of `selector` in a model's row; None while there is none, or while the table
    is being redrawn (a live event replaces its rows)."""
    try:
        found = row(driver, table, model)
        return found.find_element(By.CSS_SELECTOR, selector).text if found else None
    except StaleElementReferenceException:
        return None


def state_of(driver: webdriver.Chrome, table: str, model: str) -> str | None:
    return text_in(driver, table, model, "td.state")


def pin_label(driver: webdriver.Chrome) -> str | None:
    return text_in(driver, "models-table", "tiny-a", 'button[data-action="pin"]')


def budget_segment(driver: webdriver.Chrome, model: str) -> WebElement | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'#budget-bar .bar-segment[data-model="{model}"]')
    return found[0] if found else None


def width_percent(driver: webdriver.Chrome, element: WebElement) -> float:
    width: str = driver.execute_script("return arguments[0].style.width", element)
    return float(width.removesuffix("%"))


def button(driver: webdriver.Chrome, model: str, action: str) -> WebElement:
    found = row(driver, "models-table", model)
    assert found is not None
    return found.find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]')


def click(driver: webdriver.Chrome, model: str, action: str) -> None:
    """Click a row's button once it is enabled; the table may be redrawn between finding the
    button and clicking it (a pool event), and then it is found again."""

    def clicked(d: webdriver.Chrome) -> bool:
        try:
            found = button(d, model, action)
            if not found.is_enabled():
                return False
            found.click()
        except StaleElementReferenceException:
            return False
        return True

    wait_for(driver, clicked, f"{model}'s {action} button")


@contextmanager
def logged_at(name: str, level: int) -> Iterator[logging.Logger]:
    """The daemon runs in this process: let `name` log at `level` for one test."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield logger
    finally:
        logger.setLevel(saved)


def test_the_overview_lists_a_model_once_it_is_loaded(tiny_models: Path) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, app),
        httpx.Client(base_url=url, timeout=60) as http,
        chromium() as driver,
    ):
        empty_budget = open_overview(driver, url, app)
        assert row(driver, "loaded", "tiny-a") is None
        assert driver.find_element(By.ID, "in-flight").text == "0"
        assert driver.find_element(By.ID, "queue-depth").text == "0"

        assert http.post("/admin/load", json={"model": "tiny-a"}).status_code == 200
        # No reload: the pool's events bring it.
        wait_for(driver, lambda d: state_of(d, "loaded", "tiny-a") is not None, "tiny-a's row")
        wait_for(driver, lambda d: state_of(d, "loaded", "tiny-a") == "ready", "ready")
        pool = http.get("/admin/pool").json()
        (entry,) = pool["entries"]
        segment = budget_segment(driver, "tiny-a")
        assert segment is not None
        # No pool.max_memory here: the bar is the machine's memory.
        expected = 100 * entry["bytes"] / pool["machine_memory_bytes"]
        assert abs(width_percent(driver, segment) - expected) < 1e-6
        assert driver.find_element(By.ID, "budget-text").text != empty_budget
        assert driver.find_element(By.ID, "tokens-per-second").text == "0.0"
        assert console_errors(driver) == []


def test_load_pin_and_unload_on_the_models_tab(tiny_models: Path) -> None:
    alias = "models:\n  short: {model: tiny-a}\n"  # its row shows tiny-a's pool entry
    with (
        running_daemon(config(tiny_models, alias)) as (url, app),
        httpx.Client(base_url=url, timeout=60) as http,
        chromium() as driver,
    ):
        empty_budget = open_overview(driver, url, app)
        switch(driver, "models")
        wait_for(driver, lambda d: state_of(d, "models-table", "tiny-a") == "not loaded", "rows")
        assert state_of(driver, "models-table", "tiny-b") == "not loaded"

        click(driver, "tiny-a", "load")
        wait_for(driver, lambda d: state_of(d, "models-table", "tiny-a") == "loaded", "loaded")
        assert state_of(driver, "models-table", "tiny-b") == "not loaded"
        switch(driver, "overview")
        wait_for(driver, lambda d: budget_segment(d, "tiny-a") is not None, "tiny-a's segment")
        segment = budget_segment(driver, "tiny-a")
        assert segment is not None and width_percent(driver, segment) > 0
        assert driver.find_element(By.ID, "budget-text").text != empty_budget

        switch(driver, "models")
        click(driver, "tiny-a", "pin")
        wait_for(driver, lambda d: pin_label(d) == "Unpin", "Unpin")
        assert text_in(driver, "models-table", "tiny-a", "td.pin") == "pinned"
        assert text_in(driver, "models-table", "short", "td.pin") == "pinned"
        assert text_in(driver, "models-table", "short", 'button[data-action="pin"]') == "Unpin"
        assert http.get("/admin/pool").json()["entries"][0]["pinned"] is True
        switch(driver, "overview")
        wait_for(driver, lambda d: row(d, "loaded", "tiny-a") is not None, "tiny-a's row")
        assert text_in(driver, "loaded", "tiny-a", "td.expires") == "pinned"

        switch(driver, "models")
        wait_for(driver, lambda d: pin_label(d) == "Unpin", "Unpin")
        click(driver, "tiny-a", "pin")
        wait_for(driver, lambda d: pin_label(d) == "Pin", "Pin again")
        assert http.get("/admin/pool").json()["entries"][0]["pinned"] is False
        click(driver, "tiny-a", "unload")
        wait_for(
            driver, lambda d: state_of(d, "models-table", "tiny-a") == "not loaded", "unloaded"
        )
        assert http.get("/admin/pool").json()["entries"] == []
        switch(driver, "overview")
        wait_for(
            driver,
            lambda d: d.find_element(By.ID, "budget-text").text == empty_budget,
            "the budget as it was",
        )
        assert budget_segment(driver, "tiny-a") is None
        assert console_errors(driver) == []


def test_two_loaded_models_never_share_a_colour_on_the_budget_bar(tiny_models: Path) -> None:
    # tiny-a and tiny-g hash to the same colour; the second takes the next free one.
    extra = f"models:\n  tiny-g: {{path: {tiny_models / 'tiny-b'}}}\n"
    with (
        running_daemon(config(tiny_models, extra)) as (url, app),
        httpx.Client(base_url=url, timeout=60) as http,
        chromium() as driver,
    ):
        for model in ("tiny-a", "tiny-g"):
            assert http.post("/admin/load", json={"model": model}).status_code == 200
        open_overview(driver, url, app)
        wait_for(driver, lambda d: budget_segment(d, "tiny-g") is not None, "both segments")
        colours = {}
        for model in ("tiny-a", "tiny-g"):
            segment = budget_segment(driver, model)
            assert segment is not None
            colours[model] = segment.value_of_css_property("background-color")
        assert colours["tiny-a"] != colours["tiny-g"]
        swatches = driver.find_elements(By.CSS_SELECTOR, "ul.legend .swatch")
        assert len({s.value_of_css_property("background-color") for s in swatches}) == 2
        assert console_errors(driver) == []


@pytest.mark.slow
def test_unloading_a_model_that_is_serving_says_why_and_keeps_it(demo_model: Path) -> None:
    yaml = f"hf_cache: false\nmodels:\n  {DEMO_MODEL_ID}: {{path: {demo_model}}}\n"
    long = {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, one number a line."}],
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    with (
        running_daemon(yaml) as (url, app),
        httpx.Client(base_url=url, timeout=60) as http,
        chromium() as driver,
        http.stream("POST", "/v1/chat/completions", json=long) as serving,
    ):
        # The demo model writes a few tokens a second: it serves for minutes unless stopped.
        # (the lines' iterator is kept: dropping it would close the connection, and with it
        # the generation)
        lines = serving.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        open_tab(driver, url, app, "models")
        wait_for(driver, lambda d: state_of(d, "models-table", DEMO_MODEL_ID) == "loaded", "row")
        (entry,) = http.get("/admin/pool").json()["entries"]
        assert entry["in_flight"] == 1  # still answering
        click(driver, DEMO_MODEL_ID, "unload")
        toast = driver.find_element(By.ID, "toast")
        wait_for(driver, lambda d: "is serving requests" in toast.text, "the 409's message")
        assert toast.text.startswith(f"Unload {DEMO_MODEL_ID}")
        assert state_of(driver, "models-table", DEMO_MODEL_ID) == "loaded"
        assert [e["id"] for e in http.get("/admin/pool").json()["entries"]] == [DEMO_MODEL_ID]
        # The one console error is the network's line for the 409 itself.
        errors = console_errors(driver)
        assert len(errors) == 1 and "admin/unload" in errors[0] and "status of 409" in errors[0]


def test_the_filter_hides_models_that_do_not_match(tiny_models: Path) -> None:
    with running_daemon(config(tiny_models)) as (url, app), chromium() as driver:
        open_tab(driver, url, app, "models")
        wait_for(driver, lambda d: row(d, "models-table", "tiny-b") is not None, "the rows")
        box = driver.find_element(By.ID, "models-filter")
        box.send_keys("TINY-B")
        wait_for(driver, lambda d: not row(d, "models-table", "tiny-a").is_displayed(), "hidden")
        shown = row(driver, "models-table", "tiny-b")
        assert shown is not None and shown.is_displayed()
        box.clear()
        box.send_keys("chat")  # a capability both have
        wait_for(driver, lambda d: row(d, "models-table", "tiny-a").is_displayed(), "shown")
        assert shown.is_displayed()
        assert console_errors(driver) == []


def test_details_show_a_models_effective_settings(tiny_models: Path) -> None:
    yaml = config(tiny_models, "models:\n  tiny-a: {temperature: 0.25, max_tokens: 7}\n")
    with running_daemon(yaml) as (url, app), chromium() as driver:
        open_tab(driver, url, app, "models")
        wait_for(driver, lambda d: row(d, "models-table", "tiny-a") is not None, "the rows")
        found = row(driver, "models-table", "tiny-a")
        assert found is not None
        found.find_element(By.CSS_SELECTOR, "button.toggle").click()
        terms = wait_for(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, 'tr.details[data-detail-for="tiny-a"] dt'),
            "the details",
        )
        shown = {t.text: t.find_element(By.XPATH, "following-sibling::dd[1]").text for t in terms}
        assert shown["temperature"] == "0.25"
        assert shown["max_tokens"] == "7"
        assert shown["context length"] == "256"
        assert "top_p" not in shown  # not set: the request's or the built-in default applies
        assert console_errors(driver) == []


def test_a_refused_load_shows_its_error(tiny_models: Path) -> None:
    # A budget smaller than any model: every load is refused (507).
    yaml = config(tiny_models, "pool: {max_memory: 1KB}\n")
    with running_daemon(yaml) as (url, app), chromium() as driver:
        open_tab(driver, url, app, "models")
        wait_for(driver, lambda d: state_of(d, "models-table", "tiny-a") == "not loaded", "rows")
        click(driver, "tiny-a", "load")
        toast = wait_for(
            driver,
            lambda d: (t := d.find_element(By.ID, "toast")).is_displayed() and t.text,
            "the toast",
        )
        assert toast.startswith("Load tiny-a:")
        assert "memory budget" in toast
        assert state_of(driver, "models-table", "tiny-a") == "not loaded"
        # Chromium reports the refused call's status line itself; nothing else is an error.
        assert [e for e in console_errors(driver) if "/ui/api/admin/load" not in e] == []


def test_a_request_made_with_the_sdk_appears_in_activity_without_a_reload(
    tiny_models: Path,
) -> None:
    with (
        running_daemon(config(tiny_models)) as (url, app),
        openai.OpenAI(base_url=url + "/v1", api_key="none") as client,
        chromium() as driver,
    ):
        chat = [{"role": "user", "content": "Hi"}]
        before = client.chat.completions.create(model="tiny-b", messages=chat, max_tokens=2)
        open_tab(driver, url, app, "activity")
        rows = "#activity-table tbody tr"
        wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 1, "the ring")
        client.chat.completions.create(model="tiny-a", messages=chat, max_tokens=3)
        wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, rows)) == 2, "the event")
        newest, oldest = driver.find_elements(By.CSS_SELECTOR, rows)
        cells = {
            name: newest.find_element(By.CSS_SELECTOR, f"td.{name}").text
            for name in ("surface", "model", "status")
        }
        assert cells == {"surface": "openai", "model": "tiny-a", "status": "200"}
        assert oldest.find_element(By.CSS_SELECTOR, "td.model").text == "tiny-b"
        assert before.model == "tiny-b"
        chart = driver.find_element(By.ID, "activity-chart")
        assert chart.size["width"] > 0 and chart.size["height"] > 0
        assert console_errors(driver) == []


def line_with(driver: webdriver.Chrome, text: str) -> WebElement | None:
    """The log line whose message has `text`."""
    found = [
        e
        for e in driver.find_elements(By.CSS_SELECTOR, "#log-lines .log-line")
        if text in e.get_attribute("textContent")
    ]
    return found[0] if found else None


def test_log_lines_stream_live_and_filter_by_level_and_model(tiny_models: Path) -> None:
    with (
        logged_at("mlxrouter", logging.INFO),
        running_daemon(config(tiny_models)) as (url, app),
        httpx.Client(base_url=url, timeout=60) as http,
        chromium() as driver,
    ):
        log = logging.getLogger("mlxrouter.test")
        open_tab(driver, url, app, "logs")
        log.info("an info line for the dashboard")
        log.warning("a warning line for the dashboard")
        warning = wait_for(driver, lambda d: line_with(d, "a warning line"), "the warning line")
        info = line_with(driver, "an info line")
        assert info is not None
        assert info.get_attribute("data-level") == "info"
        assert warning.get_attribute("data-level") == "warning"
        assert info.is_displayed() and warning.is_displayed()

        Select(driver.find_element(By.ID, "log-level")).select_by_value("warning")
        wait_for(driver, lambda d: not line_with(d, "an info line").is_displayed(), "info hidden")
        assert line_with(driver, "a warning line").is_displayed()
        Select(driver.find_element(By.ID, "log-level")).select_by_value("debug")
        wait_for(driver, lambda d: line_with(d, "an info line").is_displayed(), "info shown")

        # The access log's line names its model in a field of its own.
        body = {"model": "tiny-a", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        access = wait_for(driver, lambda d: line_with(d, "model=tiny-a status=200"), "access line")
        assert access.get_attribute("data-model") == "tiny-a"
        model = driver.find_element(By.ID, "log-model")
        model.send_keys("tiny-b")
        wait_for(driver, lambda d: not line_with(d, "status=200").is_displayed(), "it hidden")
        model.clear()
        model.send_keys("tiny-a")
        wait_for(driver, lambda d: line_with(d, "status=200").is_displayed(), "it shown")
        # A line about no model in particular is not about tiny-a.
        assert not line_with(driver, "a warning line").is_displayed()
        assert console_errors(driver) == []
