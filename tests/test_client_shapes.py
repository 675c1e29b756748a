"""Request shapes real clients send, and what a client that leaves or invents names gets:
null assistant content, tool results as parts, the developer role (through the openai SDK on
the real SmolLM2 template), prompt lists (through langchain_openai.OpenAI), unknown endpoints,
invented model names in /metrics, disconnects of whole-answer requests, default temperatures."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon, wait_until
from tinymodel import make_tiny_model

# ---- the real SmolLM2 template ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(demo_model: Path) -> Iterator[openai.OpenAI]:
    config = f"hf_cache: false\nmodel_dirs: [{demo_model.parent}]\n"
    with (
        running_daemon(config) as (url, _),
        openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as sdk,
    ):
        yield sdk


@pytest.mark.slow
def test_assistant_turn_without_content_renders_as_empty(smol: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    for assistant in (
        {"role": "assistant", "content": None},
        {"role": "assistant", "tool_calls": [call]},  # content left out, as SDKs echo it
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ):
        messages: list[Any] = [{"role": "user", "content": "hi"}, assistant]
        if "tool_calls" in assistant:
            parts = [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}]
            messages.append({"role": "tool", "tool_call_id": "call_1", "content": parts})
        messages.append({"role": "user", "content": "again"})
        reply = smol.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=messages, max_tokens=2, temperature=0
        )
        assert reply.choices[0].finish_reason in ("length", "stop")
        assert reply.usage is not None and reply.usage.prompt_tokens > 10


@pytest.mark.slow
def test_developer_role_is_the_system_role_for_templates_without_it(smol: openai.OpenAI) -> None:
    def prompt_tokens(role: str) -> int:
        reply = smol.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[
                {"role": role, "content": "Answer in French."},  # type: ignore[misc,list-item]
                {"role": "user", "content": "hi"},
            ],
            max_tokens=1,
        )
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    # SmolLM2's template adds its own system prompt unless the first message is `system`.
    assert prompt_tokens("developer") == prompt_tokens("system")


# ---- tiny models ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_models: Path) -> Iterator[tuple[str, Any]]:
    config = f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
    with running_daemon(config) as served:
        yield served


def test_langchain_prompt_list_gets_one_choice_per_prompt(tiny: tuple[str, Any]) -> None:
    from langchain_openai import OpenAI as LangchainOpenAI

    url, _ = tiny
    llm = LangchainOpenAI(
        base_url=url + "/v1", api_key="unused", model="tiny-a", temperature=0, max_tokens=4
    )
    prompts = ["The quick brown fox", "Hello world", "0123456789"]
    result = llm.generate(prompts)
    texts = [generations[0].text for generations in result.generations]
    with httpx.Client(base_url=url, timeout=60) as http:
        for prompt, text in zip(prompts, texts, strict=True):
            alone = http.post(
                "/v1/completions",
                json={"model": "tiny-a", "prompt": prompt, "max_tokens": 4, "temperature": 0},
            ).json()
            assert alone["choices"][0]["text"] == text  # choice i answers prompt i


def test_prompt_lists_of_every_shape(tiny: tuple[str, Any]) -> None:
    url, _ = tiny
    with httpx.Client(base_url=url, timeout=60) as http:

        def complete(prompt: Any, **extra: Any) -> httpx.Response:
            body = {"model": "tiny-a", "prompt": prompt, "max_tokens": 3, "temperature": 0}
            return http.post("/v1/completions", json={**body, **extra})

        single = complete([5, 6, 7]).json()
        assert [c["index"] for c in single["choices"]] == [0]
        lists = complete([[5, 6, 7], [8, 9]]).json()
        assert [c["index"] for c in lists["choices"]] == [0, 1]
        assert lists["choices"][0]["text"] == single["choices"][0]["text"]
        assert lists["usage"]["prompt_tokens"] == 5
        assert lists["usage"]["completion_tokens"] == 6

        streamed = complete(["Hello", "world"], stream=True, stream_options={"include_usage": True})
        texts = {0: "", 1: ""}
        finished = set()
        usage = None
        for line in streamed.text.splitlines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event["choices"]:
                texts[choice["index"]] += choice["text"]
                if choice["finish_reason"]:
                    finished.add(choice["index"])
            usage = event.get("usage") or usage
        assert streamed.text.rstrip().endswith("data: [DONE]")
        assert finished == {0, 1}
        assert usage is not None and usage["completion_tokens"] == 6
        for index, prompt in enumerate(["Hello", "world"]):
            assert complete(prompt).json()["choices"][0]["text"] == texts[index]

        mixed = complete(["Hello", 5])
        assert mixed.status_code == 400
        assert mixed.json()["error"]["param"] == "prompt"


def test_unknown_endpoints_name_method_and_path(tiny: tuple[str, Any]) -> None:
    url, _ = tiny
    missing = httpx.post(url + "/v1/no-such-endpoint", json={})
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["message"] == "POST /v1/no-such-endpoint is not an endpoint of this server"
    assert error["type"] == "invalid_request_error"
    wrong_method = httpx.get(url + "/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert "GET" in wrong_method.json()["error"]["message"]


def test_invented_model_names_share_one_metrics_series(tiny: tuple[str, Any]) -> None:
    url, _ = tiny
    for name in ("zz-1234", "zz-5678", "zz-9999"):
        reply = httpx.post(
            url + "/v1/chat/completions",
            json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert reply.status_code == 404
    text = httpx.get(url + "/metrics").text
    assert "zz-" not in text
    assert re.search(r'mlxrouter_requests_total\{model="\(unknown\)",status="404"\} [3-9]', text)


def test_whole_answer_request_stops_when_its_client_leaves(tmp_path: Path) -> None:
    make_tiny_model(tmp_path / "models" / "long", seed=3, context=8192)
    config = f"hf_cache: false\nmodel_dirs: [{tmp_path / 'models'}]\n"
    with running_daemon(config) as (url, app):
        host, port = url.removeprefix("http://").split(":")
        # 8000 tokens with end-of-sequence banned: far longer than the wait below allows.
        body = json.dumps(
            {"model": "long", "prompt": "Hi", "max_tokens": 8000, "logit_bias": {"2": -100}}
        ).encode()
        pool = app.state.daemon.pool
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_until(lambda: any(e.in_flight for e in pool.entries()), what="generation")
        wait_until(
            lambda: all(e.in_flight == 0 for e in pool.entries()),
            timeout=10,
            what="the lease to be freed after the client left",
        )
        metrics = httpx.get(url + "/metrics").text
        assert 'mlxrouter_requests_total{model="long",status="499"} 1.0' in metrics
        assert "mlxrouter_completion_tokens_total{" not in metrics  # it never ran to the end


def test_default_temperature_from_config_and_per_model(tiny_models: Path) -> None:
    config = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\ndefault_temperature: 0\n"
        "models:\n  hot: {model: tiny-b, temperature: 2}\n"
    )
    messages = [{"role": "user", "content": "The quick brown fox"}]
    with running_daemon(config) as (url, _), httpx.Client(base_url=url, timeout=60) as http:

        def answer(model: str, **extra: Any) -> str:
            body = {"model": model, "messages": messages, "max_tokens": 12, **extra}
            text: str = http.post("/v1/chat/completions", json=body).json()["choices"][0][
                "message"
            ]["content"]
            return text

        greedy = answer("tiny-b", temperature=0)
        # No temperature named: the config's 0 applies, so every answer is the greedy one.
        assert [answer("tiny-b") for _ in range(3)] == [greedy] * 3
        # The alias's own temperature (2) applies to it: sampled answers, not all greedy.
        assert {answer("hot", seed=seed) for seed in range(4)} != {greedy}
