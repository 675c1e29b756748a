"""Per-model request defaults (`models:` entries and `defaults:`), end to end on tiny models
through the openai SDK: requests win over entries, entries over `defaults:`, live edits apply
to the next request, and `GET /v1/models/{id}` shows what is in effect."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
from conftest import wait_until, watched_daemon

MESSAGES = [{"role": "user", "content": "The quick brown fox"}]


def _config(models: Path, extra: str) -> str:
    return f"hf_cache: false\nmodel_dirs: [{models}]\n{extra}"


def test_entries_over_defaults_and_requests_over_both(tiny_models: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        _config(
            tiny_models,
            "defaults: {temperature: 0, max_tokens: 3}\n"
            "models:\n"
            "  tiny-b: {max_tokens: 5, pinned: true}\n"  # options for a discovered model
            "  brief: {model: tiny-a, system_prompt: Answer in one word., max_tokens: 4}\n",
        )
    )
    with (
        watched_daemon(config) as (url, app),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60) as client,
    ):

        def ask(model: str, **extra: object) -> openai.types.chat.ChatCompletion:
            return client.chat.completions.create(
                model=model,
                messages=MESSAGES,  # type: ignore[arg-type]
                **extra,  # type: ignore[arg-type]
            )

        # defaults: temperature 0 (the same answer each time) and 3 tokens
        first, second = ask("tiny-a"), ask("tiny-a")
        assert first.choices[0].message.content == second.choices[0].message.content
        assert first.usage is not None and first.usage.completion_tokens == 3
        # the entry's max_tokens over the default; the request's over both
        assert ask("tiny-b").usage.completion_tokens == 5  # type: ignore[union-attr]
        assert ask("tiny-b", max_tokens=2).usage.completion_tokens == 2  # type: ignore[union-attr]
        # an alias's system prompt goes first when the request has none
        briefed = ask("brief")
        plain = ask("tiny-a")
        assert briefed.usage is not None and plain.usage is not None
        assert briefed.usage.prompt_tokens > plain.usage.prompt_tokens
        assert briefed.usage.completion_tokens == 4
        own_system = [{"role": "system", "content": "x"}, *MESSAGES]
        with_own = client.chat.completions.create(model="brief", messages=own_system)  # type: ignore[arg-type]
        alone = client.chat.completions.create(model="tiny-a", messages=own_system)  # type: ignore[arg-type]
        assert with_own.usage.prompt_tokens == alone.usage.prompt_tokens  # type: ignore[union-attr]
        # what is in effect, shown per id
        detail = httpx.get(url + "/v1/models/brief").json()
        assert detail["settings"]["system_prompt"] == "Answer in one word."
        assert detail["settings"]["max_tokens"] == 4
        assert detail["settings"]["temperature"] == 0
        assert httpx.get(url + "/v1/models/tiny-b").json()["settings"]["max_tokens"] == 5
        assert app.state.daemon.registry.resolve("tiny-b").options.pinned

        # a live edit applies to the next request
        config.write_text(_config(tiny_models, "defaults: {temperature: 0, max_tokens: 6}\n"))
        wait_until(
            lambda: httpx.get(url + "/v1/models/tiny-a").json()["settings"]["max_tokens"] == 6,
            timeout=30,
            what="the edit",
        )
        assert ask("tiny-a").usage.completion_tokens == 6  # type: ignore[union-attr]


def test_settings_for_an_unknown_id_are_reported(tiny_models: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_config(tiny_models, "models: {nope: {temperature: 0}}\n"))
    with watched_daemon(config) as (_, app):
        problems = app.state.daemon.registry.problems
        assert any("models.nope" in p for p in problems)


def test_template_switches_per_model_and_per_request(tmp_path: Path) -> None:
    """`chat_template_kwargs` in a `models:` entry turns thinking off for that id; a request's
    own `chat_template_kwargs` turns it back on."""
    from thinkmodel import REASONING, make_thinking_chain_model

    make_thinking_chain_model(tmp_path / "models" / "thinker")
    config = tmp_path / "config.yaml"
    config.write_text(
        _config(
            tmp_path / "models",
            "defaults: {temperature: 0, max_tokens: 12}\n"
            "models: {quiet: {model: thinker, chat_template_kwargs: {enable_thinking: false}}}\n",
        )
    )
    with (
        watched_daemon(config) as (url, _),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60) as client,
    ):

        def reasoning(model: str, **extra: object) -> str:
            reply = client.chat.completions.create(
                model=model,
                messages=MESSAGES,  # type: ignore[arg-type]
                **extra,  # type: ignore[arg-type]
            )
            return str(reply.choices[0].message.model_extra.get("reasoning_content") or "")  # type: ignore[union-attr]

        assert reasoning("thinker").startswith(REASONING[0].strip())
        assert reasoning("quiet") == ""
        on = {"chat_template_kwargs": {"enable_thinking": True}}
        assert reasoning("quiet", extra_body=on).startswith(REASONING[0].strip())
