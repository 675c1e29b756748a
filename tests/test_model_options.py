"""Per-model run options the owner sets in the config (never a request): `chat_template`
(inline Jinja or a file, read per request, so an edit applies to the next one; a broken one
is a clear error in the OpenAI envelope) and `context_length` (a cap below the model's own,
which `max_tokens` checks and `/v1/models` follow). End to end on tiny models through the
openai SDK, on a daemon watching a real config file."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from conftest import wait_until, watched_daemon

ASK = [{"role": "user", "content": "The quick brown fox"}]
# Renders only the last message's text: the prompt is exactly that text's tokens.
BARE = "{{ messages[-1]['content'] }}"
# Renders it twice.
TWICE = "{{ messages[-1]['content'] }}{{ messages[-1]['content'] }}"


def _config(models: Path, extra: str) -> str:
    return f"hf_cache: false\nmodel_dirs: [{models}]\ndefaults: {{temperature: 0}}\n{extra}"


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


def _prompt_tokens(client: openai.OpenAI, model: str) -> int:
    reply = client.chat.completions.create(model=model, messages=ASK, max_tokens=1)  # type: ignore[arg-type]
    assert reply.usage is not None
    return reply.usage.prompt_tokens


def test_chat_template_inline_and_from_a_file(tiny_models: Path, tmp_path: Path) -> None:
    template_file = tmp_path / "templates" / "bare.jinja"
    template_file.parent.mkdir()
    template_file.write_text(BARE)
    config = tmp_path / "config.yaml"
    config.write_text(
        _config(
            tiny_models,
            "models:\n"
            f'  inline: {{model: tiny-a, chat_template: "{TWICE}"}}\n'
            "  filed: {model: tiny-a, chat_template: templates/bare.jinja}\n",  # config-relative
        )
    )
    with watched_daemon(config) as (url, _), _client(url) as client:
        text = client.completions.create(model="tiny-a", prompt=ASK[0]["content"], max_tokens=1)
        assert text.usage is not None
        alone = text.usage.prompt_tokens  # the message's text, no template around it
        own = _prompt_tokens(client, "tiny-a")  # the model's ChatML template
        assert own > alone
        assert _prompt_tokens(client, "filed") == alone
        assert _prompt_tokens(client, "inline") == 2 * alone
        # the file is read per request: an edit applies to the next one, no reload
        template_file.write_text(TWICE)
        assert _prompt_tokens(client, "filed") == 2 * alone
        # shown per id, a file's path never
        detail = httpx.get(url + "/v1/models/filed").json()
        assert detail["settings"]["chat_template"] == "(file)"
        assert httpx.get(url + "/v1/models/inline").json()["settings"]["chat_template"] == TWICE
        # a request still cannot bring its own
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="tiny-a",
                messages=ASK,  # type: ignore[arg-type]
                extra_body={"chat_template": BARE},
            )
        assert refused.value.body["param"] == "chat_template"  # type: ignore[index]


def test_a_bad_chat_template_is_a_clear_error(tiny_models: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        _config(
            tiny_models,
            "models:\n"
            "  broken: {model: tiny-a, chat_template: '{% for m in messages %}{{ m }}'}\n"
            "  refusing: {model: tiny-a, chat_template: \"{{ raise_exception('no') }}\"}\n"
            f"  missing: {{model: tiny-a, chat_template: {tmp_path}/nowhere.jinja}}\n",
        )
    )
    with watched_daemon(config) as (url, _), _client(url) as client:
        # not Jinja: the owner's fault, a server error naming the problem
        with pytest.raises(openai.InternalServerError) as broken:
            _prompt_tokens(client, "broken")
        assert broken.value.body["code"] == "config_error"  # type: ignore[index]
        assert "not valid Jinja" in broken.value.body["message"]  # type: ignore[index]
        # a template that refuses the messages: the request's
        with pytest.raises(openai.BadRequestError) as refusing:
            _prompt_tokens(client, "refusing")
        assert "rejected the messages: no" in refusing.value.body["message"]  # type: ignore[index]
        # an unreadable file: named by the model, never by its path
        with pytest.raises(openai.InternalServerError) as missing:
            _prompt_tokens(client, "missing")
        message = missing.value.body["message"]  # type: ignore[index]
        assert "`missing`" in message and "cannot be read" in message
        assert str(tmp_path) not in message
        # the others are unaffected
        assert _prompt_tokens(client, "tiny-a") > 0


def test_context_length_caps_the_model_context(tiny_models: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        _config(
            tiny_models,
            "models:\n"
            "  tiny-a: {context_length: 40}\n"
            "  roomy: {model: tiny-b, context_length: 100000}\n",  # above the model's 256
        )
    )
    with watched_daemon(config) as (url, _), _client(url) as client:
        cards = {m.id: m.model_extra or {} for m in client.models.list()}
        assert cards["tiny-a"]["context_length"] == 40
        assert cards["tiny-a"]["max_model_len"] == 40
        assert cards["tiny-b"]["context_length"] == 256
        assert cards["roomy"]["context_length"] == 256
        assert httpx.get(url + "/v1/models/tiny-a").json()["context_length"] == 40
        prompt = _prompt_tokens(client, "tiny-a")
        # max_tokens must fit the cap beside the prompt
        with pytest.raises(openai.BadRequestError) as over:
            client.chat.completions.create(
                model="tiny-a",
                messages=ASK,  # type: ignore[arg-type]
                max_tokens=41 - prompt,
            )
        assert over.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
        assert "maximum context length is 40" in over.value.body["message"]  # type: ignore[index]
        # without max_tokens the answer stops at the cap (random weights never say EOS here)
        reply = client.chat.completions.create(model="tiny-a", messages=ASK)  # type: ignore[arg-type]
        assert reply.usage is not None and reply.usage.total_tokens <= 40
        fits = client.chat.completions.create(
            model="tiny-a",
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=40 - prompt,
        )
        assert fits.usage is not None

        # a live edit lifts it
        config.write_text(_config(tiny_models, ""))
        wait_until(
            lambda: httpx.get(url + "/v1/models/tiny-a").json()["context_length"] == 256,
            timeout=30,
            what="the edit",
        )
        client.chat.completions.create(model="tiny-a", messages=ASK, max_tokens=41 - prompt)  # type: ignore[arg-type]
