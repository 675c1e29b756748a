"""The dashboard's shell in a real browser (headless Chromium) against a real daemon: every tab
opens, the live event stream connects, and the console stays free of errors."""

from __future__ import annotations

from pathlib import Path

from browser import By, chromium, console_errors, wait_for
from conftest import running_daemon


def test_every_tab_opens_and_the_live_feed_connects(tiny_models: Path) -> None:
    yaml = f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
    with running_daemon(yaml) as (url, _), chromium() as driver:
        driver.get(url + "/")  # a browser at the root lands on the dashboard
        assert driver.current_url.endswith("/ui")
        wait_for(
            driver,
            lambda d: d.find_element(By.ID, "feed-state").text == "live",
            "the live event stream to connect",
        )
        for tab in ("overview", "models", "activity", "logs", "playground"):
            driver.find_element(By.CSS_SELECTOR, f'#tabs a[data-tab="{tab}"]').click()
            wait_for(
                driver,
                lambda d, tab=tab: (
                    d.find_element(By.ID, "view").get_attribute("data-tab") == tab
                    and d.find_elements(By.CSS_SELECTOR, "#view > *")
                ),
                f"the {tab} tab to render",
            )
        assert console_errors(driver) == []
