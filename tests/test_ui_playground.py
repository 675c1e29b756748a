"""The dashboard's playground in a real browser (headless Chromium) against a real daemon: a
streamed chat with the real demo model, Stop cancelling a long generation and freeing its
lease, the reasoning of a thinking model shown apart from the answer, the similarity of two
texts with an embedding model, and the image input of a vision model. The console stays
free of errors in each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import By, chromium, console_errors, wait_for, wait_shown
from conftest import running_daemon, wait_until
from imagedata import png
from selenium.webdriver.support.ui import Select
from thinkmodel import ANSWER, REASONING
from tinymodel import make_tiny_model

from mlxrouter.demo import DEMO_MODEL_ID

Driver = Any  # selenium's webdriver.Chrome


def open_playground(driver: Driver, url: str) -> None:
    driver.get(url + "/ui#playground")
    wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#pg-model option:not([value=''])"),
        "the playground's model list",
    )


def choose(driver: Driver, select_id: str, value: str) -> None:
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def type_into(driver: Driver, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def ask(driver: Driver, text: str) -> None:
    type_into(driver, "pg-input", text)
    driver.find_element(By.ID, "pg-send").click()


def answered(count: int) -> Callable[[Driver], bool]:
    """The transcript holds `count` answers and none is streaming any more."""

    def check(driver: Driver) -> bool:
        turns = driver.find_elements(By.CSS_SELECTOR, "#pg-transcript .turn.assistant")
        return (
            len(turns) == count
            and not driver.find_element(By.ID, "pg-stop").is_enabled()
            and driver.find_element(By.ID, "pg-send").is_enabled()
        )

    return check


def last_answer(driver: Driver) -> Any:
    return driver.find_elements(By.CSS_SELECTOR, "#pg-transcript .turn.assistant")[-1]


def stat(driver: Driver, name: str) -> int:
    value = driver.find_element(By.ID, "pg-stats").get_attribute(f"data-{name}")
    assert value is not None, f"#pg-stats has no data-{name}"
    return int(value)


def demo_config(demo_model: Path) -> str:
    return f"hf_cache: false\nmodels:\n  {DEMO_MODEL_ID}: {{path: {demo_model}}}\n"


@pytest.mark.slow
def test_a_chat_streams_its_answer_and_keeps_the_conversation(demo_model: Path) -> None:
    with running_daemon(demo_config(demo_model)) as (url, _), chromium() as driver:
        open_playground(driver, url)
        choose(driver, "pg-model", DEMO_MODEL_ID)
        type_into(driver, "pg-temperature", "0")
        type_into(driver, "pg-max-tokens", "8")
        ask(driver, "What is the capital of France? Answer in one word.")
        wait_for(driver, answered(1), "the first answer")
        assert "Paris" in last_answer(driver).find_element(By.CLASS_NAME, "answer").text
        first_prompt = stat(driver, "prompt-tokens")
        first_answer = stat(driver, "completion-tokens")
        assert 0 < first_answer <= 8
        assert "first token" in driver.find_element(By.ID, "pg-stats").text

        ask(driver, "And of Italy?")
        wait_for(driver, answered(2), "the second answer")
        # the first exchange went with the second question
        assert stat(driver, "prompt-tokens") > first_prompt + first_answer
        assert len(driver.find_elements(By.CSS_SELECTOR, "#pg-transcript .turn.user")) == 2

        driver.find_element(By.ID, "pg-clear").click()
        wait_for(
            driver,
            lambda d: not d.find_elements(By.CSS_SELECTOR, "#pg-transcript .turn"),
            "Clear to empty the transcript",
        )
        assert console_errors(driver) == []


def in_flight(http: httpx.Client) -> int:
    return sum(entry["in_flight"] for entry in http.get("/admin/pool").json()["entries"])


def finished(http: httpx.Client) -> list[dict[str, Any]]:
    """The daemon's record of the requests that ended (`/admin/activity`), oldest first."""
    requests: list[dict[str, Any]] = http.get("/admin/activity").json()["requests"]
    return requests


@pytest.mark.slow
def test_stop_ends_a_long_generation_and_frees_its_lease(demo_model: Path) -> None:
    with (
        running_daemon(demo_config(demo_model)) as (url, _),
        chromium() as driver,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        open_playground(driver, url)
        choose(driver, "pg-model", DEMO_MODEL_ID)
        type_into(driver, "pg-temperature", "0")
        type_into(driver, "pg-max-tokens", "2000")
        ask(driver, "Write a very long story about a dragon who learns to count to a thousand.")
        wait_for(
            driver,
            lambda d: last_answer(d).find_element(By.CLASS_NAME, "answer").text.strip(),
            "the answer to begin",
        )
        assert in_flight(http) == 1
        driver.find_element(By.ID, "pg-stop").click()
        wait_for(driver, answered(1), "Stop to end the answer")
        assert last_answer(driver).find_element(By.CLASS_NAME, "note").text == "stopped"
        wait_until(lambda: in_flight(http) == 0, timeout=60, what="the lease to be freed")
        # the daemon saw the client go: the request ended 499, long before 2000 tokens
        wait_until(lambda: len(finished(http)) == 1, what="the request's record")
        assert finished(http)[0]["status"] == 499
        assert finished(http)[0]["completion_tokens"] < 2000

        # leaving the tab stops an answer under way too
        ask(driver, "Write another very long story, about a whale.")
        wait_for(
            driver,
            lambda d: last_answer(d).find_element(By.CLASS_NAME, "answer").text.strip(),
            "the second answer to begin",
        )
        driver.find_element(By.CSS_SELECTOR, '#tabs a[data-tab="overview"]').click()
        wait_until(lambda: in_flight(http) == 0, timeout=60, what="the second lease to be freed")
        wait_until(lambda: len(finished(http)) == 2, what="the second request's record")
        assert finished(http)[1]["status"] == 499
        assert console_errors(driver) == []


def test_a_thinking_models_reasoning_is_shown_apart_from_its_answer(agent_models: Path) -> None:
    with (
        running_daemon(f"hf_cache: false\nmodel_dirs: [{agent_models}]\n") as (url, _),
        chromium() as driver,
    ):
        open_playground(driver, url)
        choose(driver, "pg-model", "thinker")
        type_into(driver, "pg-temperature", "0")
        type_into(driver, "pg-max-tokens", "40")
        ask(driver, "What is the weather in Paris?")
        wait_for(driver, answered(1), "the answer")
        turn = last_answer(driver)
        reasoning = turn.find_element(By.CLASS_NAME, "reasoning")
        assert reasoning.get_attribute("textContent") == "".join(REASONING)
        assert turn.find_element(By.CLASS_NAME, "answer").text == "".join(ANSWER)
        # folded away once the answer began, a click away
        thinking = turn.find_element(By.CSS_SELECTOR, "details.thinking")
        assert thinking.is_displayed() and thinking.get_attribute("open") is None
        assert "reasoning" in driver.find_element(By.ID, "pg-stats").text
        assert console_errors(driver) == []


def test_two_texts_similarity_with_an_embedding_model(
    tiny_models: Path, embedding_model: Path
) -> None:
    yaml = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
        f"models:\n  minilm: {{path: {embedding_model}}}\n"
    )
    with running_daemon(yaml) as (url, _), chromium() as driver:
        open_playground(driver, url)
        wait_for(driver, lambda d: d.find_elements(By.ID, "pg-similarity"), "the similarity panel")
        chat_models = [
            o.get_attribute("value")
            for o in driver.find_elements(By.CSS_SELECTOR, "#pg-model option")
        ]
        assert "tiny-a" in chat_models and "minilm" not in chat_models

        def similarity(a: str, b: str) -> float:
            type_into(driver, "pg-text-a", a)
            type_into(driver, "pg-text-b", b)
            driver.find_element(By.ID, "pg-compare").click()
            wait_for(
                driver,
                lambda d: d.find_element(By.ID, "pg-compare").is_enabled(),
                "the embeddings",
            )
            return float(driver.find_element(By.ID, "pg-score").text)

        close = similarity("The cat sits on the mat.", "A cat is sitting on the mat.")
        far = similarity("The cat sits on the mat.", "Quarterly tax filings are due in April.")
        assert -1 <= far < close <= 1
        assert console_errors(driver) == []


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding the tiny Qwen2-VL `vlm` and the tiny text model `text`."""
    from visionmodel import make_tiny_vlm

    root = tmp_path_factory.mktemp("ui-vision-models")
    make_tiny_vlm(root / "vlm")
    make_tiny_model(root / "text", seed=1)
    return root


def test_the_image_input_shows_for_a_vision_model_only(vision_models: Path, tmp_path: Path) -> None:
    picture = tmp_path / "red.png"
    picture.write_bytes(png(56, 56))
    with (
        running_daemon(f"hf_cache: false\nmodel_dirs: [{vision_models}]\n") as (url, _),
        chromium() as driver,
    ):
        open_playground(driver, url)
        choose(driver, "pg-model", "text")
        assert not driver.find_element(By.ID, "pg-image").is_displayed()
        choose(driver, "pg-model", "vlm")
        wait_for(
            driver, lambda d: d.find_element(By.ID, "pg-image").is_displayed(), "the image input"
        )
        driver.find_element(By.ID, "pg-image").send_keys(str(picture))
        wait_for(
            driver,
            lambda d: "red.png" in d.find_element(By.CLASS_NAME, "pg-image-name").text,
            "the image to be attached",
        )
        type_into(driver, "pg-max-tokens", "3")
        ask(driver, "What is in the picture?")
        wait_for(driver, answered(1), "the answer about the picture")
        assert "failed" not in (last_answer(driver).get_attribute("class") or "")
        assert driver.find_elements(By.CSS_SELECTOR, "#pg-transcript .turn.user img.pg-thumb")
        assert stat(driver, "prompt-tokens") > 0
        choose(driver, "pg-model", "text")
        assert not driver.find_element(By.ID, "pg-image").is_displayed()
        assert not driver.find_elements(By.ID, "pg-similarity")  # no embedding model here
        assert console_errors(driver) == []


def test_a_refused_request_is_told_and_left_out_of_the_conversation(tiny_models: Path) -> None:
    with (
        running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _),
        chromium() as driver,
    ):
        open_playground(driver, url)
        choose(driver, "pg-model", "tiny-a")
        type_into(driver, "pg-max-tokens", "3")
        type_into(driver, "pg-temperature", "5")  # the daemon takes 0 to 2
        ask(driver, "Hello")
        toast = wait_shown(driver, "toast", "the error's toast")
        assert "temperature" in toast.text
        wait_for(driver, answered(1), "the refused answer to end")
        assert "failed" in (last_answer(driver).get_attribute("class") or "")
        assert "temperature" in last_answer(driver).find_element(By.CLASS_NAME, "note").text
        assert driver.find_element(By.ID, "pg-input").get_attribute("value") == "Hello"

        type_into(driver, "pg-temperature", "0")
        driver.find_element(By.ID, "pg-send").click()  # the message put back, sent again
        wait_for(driver, answered(2), "the answer")
        assert "failed" not in (last_answer(driver).get_attribute("class") or "")
        after_failure = stat(driver, "prompt-tokens")

        # the conversation outlives a look at another tab
        driver.find_element(By.CSS_SELECTOR, '#tabs a[data-tab="overview"]').click()
        driver.find_element(By.CSS_SELECTOR, '#tabs a[data-tab="playground"]').click()
        wait_for(
            driver,
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pg-transcript .turn")) == 4,
            "the transcript back",
        )
        # the same question alone costs the same prompt: the failed exchange was not sent
        driver.find_element(By.ID, "pg-clear").click()
        ask(driver, "Hello")
        wait_for(driver, answered(1), "the answer to the question alone")
        assert stat(driver, "prompt-tokens") == after_failure
        # the one console error is the network's line for the refused request
        assert [e for e in console_errors(driver) if "status of 400" not in e] == []
