"""Screenshots of the dashboard for the README, from a real daemon: `mlxrouter serve` with the
demo models (SmolLM2-135M-Instruct and all-MiniLM-L6-v2, fetched into .cache/models once, as
the test suite does), the chat model loaded and a few requests made so Activity and Logs have
something to show, then each tab in headless Chromium (the tests' binaries and flags, from
tests/browser.py) saved as docs/images/ui-<tab>.png. The playground's shot holds a short
conversation and a similarity score.
Usage: scripts/screenshots [--out DIR] [--width 1280] [--height 800] [--dark]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _harness import daemon_env, start_mlxrouter, stop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from browser import By, start_chromium, wait_for  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from mlxrouter.demo import (  # noqa: E402
    DEMO_EMBEDDING_ID,
    DEMO_MODEL_ID,
    ensure_demo_embedding_model,
    ensure_demo_model,
)

TABS = ["overview", "models", "activity", "logs", "playground"]
SCORE = re.compile(r"-?\d\.\d{3}")
QUESTION = "What is the capital of France? Answer in one word."


def make_traffic(url: str) -> None:
    """Load the chat model and make a few short requests of each kind, one of them failing,
    so the Overview, Activity and Logs tabs have content."""
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/admin/load", json={"model": DEMO_MODEL_ID}).raise_for_status()
        chat = {"model": DEMO_MODEL_ID, "max_tokens": 8, "temperature": 0}
        for question in (QUESTION, "Name a colour."):
            messages = [{"role": "user", "content": question}]
            http.post("/v1/chat/completions", json={**chat, "messages": messages})
        with http.stream(
            "POST",
            "/v1/chat/completions",
            json={**chat, "messages": [{"role": "user", "content": "Say hello."}], "stream": True},
        ) as streamed:
            for _ in streamed.iter_lines():
                pass
        http.post("/v1/embeddings", json={"model": DEMO_EMBEDDING_ID, "input": ["a cat", "a dog"]})
        # a model that does not exist: an error row in Activity and a line in Logs
        missing = {**chat, "model": "no-such-model"}
        http.post(
            "/v1/chat/completions",
            json={**missing, "messages": [{"role": "user", "content": "Hi"}]},
        )


def settle(driver: Any, quiet: float = 1.0, limit: float = 15.0) -> None:
    """Wait until the view has not changed for `quiet` seconds (the tab's fetches answered);
    after `limit` seconds shoot anyway (a tab may tick a clock every second)."""
    deadline = time.monotonic() + limit
    html, since = None, time.monotonic()
    while (now := time.monotonic()) < deadline:
        current = driver.find_element(By.ID, "view").get_attribute("innerHTML")
        if current != html:
            html, since = current, now
        elif now - since >= quiet:
            return
        time.sleep(0.1)


def play(driver: Any) -> None:
    """A short conversation and a similarity score in the playground."""
    wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#pg-model option[value="{DEMO_MODEL_ID}"]'),
        "the playground's models",
    )
    Select(driver.find_element(By.ID, "pg-model")).select_by_value(DEMO_MODEL_ID)
    for field, value in (("pg-temperature", "0"), ("pg-max-tokens", "16"), ("pg-input", QUESTION)):
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "pg-send").click()
    wait_for(
        driver,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#pg-transcript .turn.assistant")
            and d.find_element(By.ID, "pg-send").is_enabled()
        ),
        "the answer",
    )
    wait_for(driver, lambda d: d.find_elements(By.ID, "pg-similarity"), "the similarity panel")
    driver.find_element(By.ID, "pg-text-a").send_keys("The cat sits on the mat.")
    driver.find_element(By.ID, "pg-text-b").send_keys("A cat is sitting on a rug.")
    driver.find_element(By.ID, "pg-compare").click()
    wait_for(
        driver,
        lambda d: SCORE.fullmatch(d.find_element(By.ID, "pg-score").text),
        "the similarity score",
    )


def shoot(url: str, out: Path, width: int, height: int, dark: bool) -> list[Path]:
    driver = start_chromium(width, height)
    try:
        # exactly width x height pixels, whatever the window's frame takes
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        if dark:
            driver.execute_cdp_cmd(
                "Emulation.setEmulatedMedia",
                {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
            )
        driver.get(url + "/ui")
        wait_for(
            driver, lambda d: d.find_element(By.ID, "feed-state").text == "live", "the live feed"
        )
        saved = []
        for tab in TABS:
            driver.find_element(By.CSS_SELECTOR, f'#tabs a[data-tab="{tab}"]').click()
            wait_for(
                driver,
                lambda d, tab=tab: d.find_element(By.ID, "view").get_attribute("data-tab") == tab,
                f"the {tab} tab",
            )
            if tab == "playground":
                play(driver)
            settle(driver)
            path = out / (f"ui-{tab}-dark.png" if dark else f"ui-{tab}.png")
            driver.save_screenshot(str(path))
            saved.append(path)
        return saved
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--dark", action="store_true", help="the dark colour scheme")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    models = REPO / ".cache" / "models"
    chat_model = ensure_demo_model(models)
    embedding_model = ensure_demo_embedding_model(models)
    with tempfile.TemporaryDirectory(prefix="mlxrouter-screenshots-") as temp:
        root = Path(temp)
        config = root / "config.yaml"
        config.write_text(
            "hf_cache: false\n"
            "log_prompts: true\n"  # Activity shows the prompts
            "models:\n"
            f"  {DEMO_MODEL_ID}: {{path: {chat_model}}}\n"
            f"  {DEMO_EMBEDDING_ID}: {{path: {embedding_model}}}\n"
        )
        env = daemon_env(root)
        try:
            daemon, url = start_mlxrouter(
                ["--config", str(config)], log=root / "serve.log", env=env, timeout=180
            )
        except RuntimeError as exc:
            raise SystemExit(f"the daemon did not start: {exc}") from None
        try:
            make_traffic(url)
            saved = shoot(url, args.out, args.width, args.height, args.dark)
        finally:
            stop(daemon)
    for path in saved:
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
