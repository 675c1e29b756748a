"""The bad-input suite: every case gets the right status and the error envelope of the API it
spoke to (OpenAI's, Anthropic's under /v1/messages, Ollama's under /api/), no traceback and no
filesystem path; afterwards the daemon still serves and no lease is held."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon
from imagedata import b64, data_url, garbage_png, huge_png, png

from mlxrouter.api.ui import CSRF_COOKIE, CSRF_HEADER

OK_MESSAGES = [{"role": "user", "content": "hi"}]


HUGE = huge_png()
#: the first image of the first message (after its text part)
AT = "messages[0].content[1]"


def user_image(*urls: str) -> dict[str, Any]:
    """A user message: a text part, then an `image_url` part per URL."""
    images = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": [{"type": "text", "text": "What is this?"}, *images]}


def image_blocks(*sources: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic user message: a text block, then an `image` block per source."""
    images = [{"type": "image", "source": source} for source in sources]
    return {"role": "user", "content": [{"type": "text", "text": "What is this?"}, *images]}


def base64_source(data: bytes) -> dict[str, Any]:
    return {"type": "base64", "media_type": "image/png", "data": b64(data)}


def url_source(url: str) -> dict[str, Any]:
    return {"type": "url", "url": url}


def input_image(**fields: Any) -> dict[str, Any]:
    """A Responses user message: an `input_text` part, then an `input_image` part."""
    image = {"type": "input_image", **fields}
    return {"role": "user", "content": [{"type": "input_text", "text": "What is it?"}, image]}


def ollama_images(*images: str) -> dict[str, Any]:
    return {"role": "user", "content": "What is this?", "images": list(images)}


def ollama_generate(*images: str, **fields: Any) -> dict[str, Any]:
    body = {"model": "tiny-a", "prompt": "What is this?", "images": list(images)}
    return {**body, "options": {"num_predict": 2}, **fields}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-a", "messages": OK_MESSAGES, "max_tokens": 2, **fields}


def text(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-a", "prompt": "hi", "max_tokens": 2, **fields}


def message(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-a", "messages": OK_MESSAGES, "max_tokens": 2, **fields}


def response(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-a", "input": "hi", "max_output_tokens": 2, **fields}


def embed(**fields: Any) -> dict[str, Any]:
    return {"model": "minilm", "input": "hi", **fields}


def ollama(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-a", "messages": OK_MESSAGES, "options": {"num_predict": 2}, **fields}


# (name, method, path, body or raw bytes, expected status, expected param or None)
CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    ("unknown model", "POST", "/v1/chat/completions", chat(model="nope"), 404, "model"),
    (
        "absolute path as model",
        "POST",
        "/v1/chat/completions",
        chat(model="/etc/passwd"),
        404,
        "model",
    ),
    (
        "relative path as model",
        "POST",
        "/v1/chat/completions",
        chat(model="../tiny-a"),
        404,
        "model",
    ),
    ("home path as model", "POST", "/v1/chat/completions", chat(model="~/tiny-a"), 404, "model"),
    (
        "url-encoded path as model",
        "POST",
        "/v1/chat/completions",
        chat(model="..%2Ftiny-a"),
        404,
        "model",
    ),
    ("NUL byte in model", "POST", "/v1/chat/completions", chat(model="tiny-a\x00"), 404, "model"),
    (
        "hub repo as model",
        "POST",
        "/v1/chat/completions",
        chat(model="mlx-community/Llama-3.2-1B-Instruct-4bit"),
        404,
        "model",
    ),
    ("model not a string", "POST", "/v1/chat/completions", chat(model=5), 400, "model"),
    ("no messages", "POST", "/v1/chat/completions", {"model": "tiny-a"}, 400, "messages"),
    ("empty messages", "POST", "/v1/chat/completions", chat(messages=[]), 400, "messages"),
    ("messages not a list", "POST", "/v1/chat/completions", chat(messages="hi"), 400, "messages"),
    (
        "unknown role",
        "POST",
        "/v1/chat/completions",
        chat(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "messages[0].role",
    ),
    (
        "message without role",
        "POST",
        "/v1/chat/completions",
        chat(messages=[{"content": "x"}]),
        400,
        "messages[0].role",
    ),
    (
        "image content part without its url",
        "POST",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        400,
        "messages[0].content[0]",
    ),
    *[
        (f"image: {name}", "POST", "/v1/chat/completions", chat(messages=[parts]), 400, where)
        for name, parts, where in [
            ("to a text-only model", user_image(data_url(png())), "messages[0].content[1]"),
            ("corrupt base64", user_image("data:image/png;base64,!!notbase64!!"), AT),
            ("PNG header then garbage", user_image(data_url(garbage_png())), AT),
            ("30,000 x 30,000 pixels", user_image(data_url(HUGE)), AT),
            ("nine images", user_image(*[data_url(png())] * 9), "messages[0].content[9]"),
            ("http URL by default", user_image("http://example.com/cat.png"), AT),
            ("file: URL", user_image("file:///etc/passwd"), AT),
            ("plain base64 as url", user_image(b64(png())), AT),
            ("in a system message", {**user_image(data_url(png())), "role": "system"}, AT),
        ]
    ],
    (
        "temperature above 2",
        "POST",
        "/v1/chat/completions",
        chat(temperature=2.5),
        400,
        "temperature",
    ),
    (
        "negative temperature",
        "POST",
        "/v1/chat/completions",
        chat(temperature=-0.1),
        400,
        "temperature",
    ),
    (
        "temperature a string",
        "POST",
        "/v1/chat/completions",
        chat(temperature="hot"),
        400,
        "temperature",
    ),
    ("top_p above 1", "POST", "/v1/chat/completions", chat(top_p=1.5), 400, "top_p"),
    ("negative top_p", "POST", "/v1/chat/completions", chat(top_p=-1), 400, "top_p"),
    ("min_p above 1", "POST", "/v1/chat/completions", chat(min_p=2), 400, "min_p"),
    ("negative top_k", "POST", "/v1/chat/completions", chat(top_k=-1), 400, "top_k"),
    ("zero max_tokens", "POST", "/v1/chat/completions", chat(max_tokens=0), 400, "max_tokens"),
    ("negative max_tokens", "POST", "/v1/chat/completions", chat(max_tokens=-5), 400, "max_tokens"),
    (
        "max_tokens beyond context",
        "POST",
        "/v1/chat/completions",
        chat(max_tokens=100000),
        400,
        "max_tokens",
    ),
    (
        "zero max_completion_tokens",
        "POST",
        "/v1/chat/completions",
        chat(max_completion_tokens=0),
        400,
        "max_completion_tokens",
    ),
    ("n of 2", "POST", "/v1/chat/completions", chat(n=2), 400, "n"),
    ("n of 0", "POST", "/v1/chat/completions", chat(n=0), 400, "n"),
    (
        "logprobs integer above 10",
        "POST",
        "/v1/chat/completions",
        chat(logprobs=11),
        400,
        "logprobs",
    ),
    (
        "top_logprobs above 20",
        "POST",
        "/v1/chat/completions",
        chat(logprobs=True, top_logprobs=21),
        400,
        "top_logprobs",
    ),
    (
        "top_logprobs without logprobs",
        "POST",
        "/v1/chat/completions",
        chat(top_logprobs=3),
        400,
        "top_logprobs",
    ),
    ("too many stop strings", "POST", "/v1/chat/completions", chat(stop=["x"] * 17), 400, "stop"),
    ("stop string too long", "POST", "/v1/chat/completions", chat(stop="x" * 300), 400, "stop"),
    (
        "logit_bias key not an id",
        "POST",
        "/v1/chat/completions",
        chat(logit_bias={"abc": 1}),
        400,
        "logit_bias",
    ),
    (
        "logit_bias id outside vocabulary",
        "POST",
        "/v1/chat/completions",
        chat(logit_bias={"99999": 1}),
        400,
        "logit_bias",
    ),
    (
        "logit_bias value out of range",
        "POST",
        "/v1/chat/completions",
        chat(logit_bias={"1": 500}),
        400,
        "logit_bias",
    ),
    (
        "oversized logit_bias",
        "POST",
        "/v1/chat/completions",
        chat(logit_bias={str(i): 1 for i in range(1100)}),
        400,
        "logit_bias",
    ),
    (
        "prompt longer than context",
        "POST",
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "x " * 600}]),
        400,
        "messages",
    ),
    (
        "request-supplied chat template",
        "POST",
        "/v1/chat/completions",
        chat(chat_template="{{ messages }}"),
        400,
        "chat_template",
    ),
    (
        "json_schema response_format",
        "POST",
        "/v1/chat/completions",
        chat(response_format={"type": "json_schema"}),
        400,
        "response_format",
    ),
    (
        "tools on a model without tool support",
        "POST",
        "/v1/chat/completions",
        chat(tools=[{"type": "function", "function": {"name": "f"}}]),
        400,
        "tools",
    ),
    (
        "bad tool_choice",
        "POST",
        "/v1/chat/completions",
        chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="sometimes"),
        400,
        "tool_choice",
    ),
    (
        "adapter that is not one",
        "POST",
        "/v1/chat/completions",
        chat(adapters="tiny-b"),
        400,
        "adapters",
    ),
    ("unknown adapter", "POST", "/v1/chat/completions", chat(adapters="nope"), 404, "adapters"),
    (
        "bad keep_alive",
        "POST",
        "/v1/chat/completions",
        chat(keep_alive="whenever"),
        400,
        "keep_alive",
    ),
    ("malformed JSON", "POST", "/v1/chat/completions", b"{not json", 400, None),
    ("JSON array body", "POST", "/v1/chat/completions", b"[1, 2]", 400, None),
    ("empty body", "POST", "/v1/chat/completions", b"", 400, None),
    ("prompt missing", "POST", "/v1/completions", {"model": "tiny-a"}, 400, "prompt"),
    ("empty prompt", "POST", "/v1/completions", text(prompt=""), 400, "prompt"),
    (
        "token ids outside vocabulary",
        "POST",
        "/v1/completions",
        text(prompt=[1, 2, 999999]),
        400,
        "prompt",
    ),
    ("negative token id", "POST", "/v1/completions", text(prompt=[-1]), 400, "prompt"),
    ("completion logprobs above 10", "POST", "/v1/completions", text(logprobs=11), 400, "logprobs"),
    ("echo unsupported", "POST", "/v1/completions", text(echo=True), 400, "echo"),
    ("unknown model id in path", "GET", "/v1/models/nope", None, 404, "model"),
    (
        "path traversal in model path",
        "GET",
        "/v1/models/..%2F..%2Fetc%2Fpasswd",
        None,
        404,
        "model",
    ),
    ("unknown route", "GET", "/v2/everything", None, 404, None),
    ("wrong method", "DELETE", "/v1/models", None, 405, None),
    ("GET on a POST route", "GET", "/v1/completions", None, 405, None),
    ("admin load unknown", "POST", "/admin/load", {"model": "nope"}, 404, "model"),
    ("admin load missing field", "POST", "/admin/load", {}, 400, "model"),
    ("POST on admin activity", "POST", "/admin/activity", {"x": 1}, 405, None),
    ("DELETE on admin events", "DELETE", "/admin/events", None, 405, None),
    ("admin activity with a path after it", "GET", "/admin/activity/../../etc", None, 404, None),
    # ---- Anthropic Messages: Anthropic's envelope ----
    ("messages: unknown model", "POST", "/v1/messages", message(model="nope"), 404, None),
    ("messages: no max_tokens", "POST", "/v1/messages", {"model": "tiny-a"}, 400, None),
    ("messages: max_tokens 0", "POST", "/v1/messages", message(max_tokens=0), 400, None),
    ("messages: empty messages", "POST", "/v1/messages", message(messages=[]), 400, None),
    ("messages: temperature 3", "POST", "/v1/messages", message(temperature=3), 400, None),
    (
        "messages: unknown tool_choice",
        "POST",
        "/v1/messages",
        message(tool_choice={"type": "maybe"}),
        400,
        None,
    ),
    (
        "messages: image block without a source type",
        "POST",
        "/v1/messages",
        message(messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}]),
        400,
        None,
    ),
    *[
        (f"messages: image {name}", "POST", "/v1/messages", message(messages=[turn]), 400, where)
        for name, turn, where in [
            ("to a text-only model", image_blocks(base64_source(png())), AT),
            ("corrupt base64", image_blocks({"type": "base64", "data": "@@@@"}), AT),
            ("PNG header then garbage", image_blocks(base64_source(garbage_png())), AT),
            ("30,000 x 30,000 pixels", image_blocks(base64_source(HUGE)), AT),
            ("nine images", image_blocks(*[base64_source(png())] * 9), "messages[0].content[9]"),
            ("http URL by default", image_blocks(url_source("http://example.com/a.png")), AT),
            ("file: URL", image_blocks(url_source("file:///etc/passwd")), AT),
            ("without data", image_blocks({"type": "base64", "media_type": "image/png"}), AT),
            (
                "in a tool_result, to a text-only model",
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "image", "source": base64_source(png())}],
                        }
                    ],
                },
                "messages[0].content[0].content[0]",
            ),
        ]
    ],
    (
        "count_tokens: image to a text-only model",
        "POST",
        "/v1/messages/count_tokens",
        {"model": "tiny-a", "messages": [image_blocks(base64_source(png()))]},
        400,
        AT,
    ),
    (
        "messages: prompt longer than context",
        "POST",
        "/v1/messages?beta=true",
        message(messages=[{"role": "user", "content": "x " * 600}], stream=True),
        400,
        None,
    ),
    ("messages: malformed JSON", "POST", "/v1/messages", b"{not json", 400, None),
    (
        "count_tokens: unknown model",
        "POST",
        "/v1/messages/count_tokens",
        {"model": "nope", "messages": OK_MESSAGES},
        404,
        None,
    ),
    ("messages: GET", "GET", "/v1/messages", None, 405, None),
    # ---- OpenAI Responses: OpenAI's envelope ----
    ("responses: unknown model", "POST", "/v1/responses", response(model="nope"), 404, "model"),
    (
        "responses: unknown previous_response_id",
        "POST",
        "/v1/responses",
        response(previous_response_id="resp_nope"),
        404,
        "previous_response_id",
    ),
    ("responses: empty input", "POST", "/v1/responses", response(input=""), 400, "input"),
    ("responses: no message", "POST", "/v1/responses", response(input=[]), 400, "input"),
    (
        "responses: temperature 3",
        "POST",
        "/v1/responses",
        response(temperature=3),
        400,
        "temperature",
    ),
    (
        "responses: image input part without its url",
        "POST",
        "/v1/responses",
        response(input=[{"role": "user", "content": [{"type": "input_image"}]}]),
        400,
        "input[0].content[0]",
    ),
    *[
        (f"responses: image {name}", "POST", "/v1/responses", response(input=[item]), 400, where)
        for name, item, where in [
            ("to a text-only model", input_image(image_url=data_url(png())), "input[0].content[1]"),
            (
                "corrupt base64",
                input_image(image_url="data:image/png;base64,@@"),
                "input[0].content[1]",
            ),
            ("as a file_id", input_image(file_id="file-abc"), "input[0].content[1]"),
            (
                "http URL by default",
                input_image(image_url="https://example.com/a.png"),
                "input[0].content[1]",
            ),
        ]
    ],
    ("responses: malformed JSON", "POST", "/v1/responses", b"[1, 2", 400, None),
    ("responses: GET unknown id", "GET", "/v1/responses/resp_nope", None, 404, None),
    ("responses: DELETE unknown id", "DELETE", "/v1/responses/resp_nope", None, 404, None),
    (
        "responses: input_items of unknown id",
        "GET",
        "/v1/responses/resp_nope/input_items",
        None,
        404,
        None,
    ),
    (
        "responses: input_items limit 0",
        "GET",
        "/v1/responses/resp_nope/input_items?limit=0",
        None,
        400,
        None,
    ),
    # ---- Ollama: Ollama's envelope ----
    ("ollama chat: unknown model", "POST", "/api/chat", ollama(model="nope"), 404, None),
    (
        "ollama generate: unknown model",
        "POST",
        "/api/generate",
        {"model": "nope", "prompt": "hi"},
        404,
        None,
    ),
    ("ollama show: unknown model", "POST", "/api/show", {"model": "nope"}, 404, None),
    (
        "ollama chat: temperature 3",
        "POST",
        "/api/chat",
        ollama(options={"temperature": 3}),
        400,
        None,
    ),
    ("ollama chat: messages not a list", "POST", "/api/chat", ollama(messages="hi"), 400, None),
    *[
        (f"ollama chat: image {name}", "POST", "/api/chat", ollama(messages=[turn]), 400, where)
        for name, turn, where in [
            ("to a text-only model", ollama_images(b64(png())), "messages[0].images[0]"),
            ("corrupt base64", ollama_images("@@@@"), "messages[0].images[0]"),
            ("PNG header then garbage", ollama_images(b64(garbage_png())), "messages[0].images[0]"),
            (
                "30,000 x 30,000 pixels",
                ollama_images(b64(png()), b64(HUGE)),
                "messages[0].images[1]",
            ),
            ("nine images", ollama_images(*[b64(png())] * 9), "messages[0].images[8]"),
            ("an http URL", ollama_images("http://example.com/a.png"), "messages[0].images[0]"),
        ]
    ],
    *[
        (f"ollama generate: {name}", "POST", "/api/generate", generate, 400, where)
        for name, generate, where in [
            ("image to a text-only model", ollama_generate(b64(png())), "images[0]"),
            ("corrupt image", ollama_generate(b64(garbage_png())), "images[0]"),
            ("images with raw", ollama_generate(b64(png()), raw=True), "images"),
        ]
    ],
    ("ollama chat: malformed JSON", "POST", "/api/chat", b"{not json", 400, None),
    (
        "ollama chat: prompt longer than context",
        "POST",
        "/api/chat",
        ollama(messages=[{"role": "user", "content": "x " * 600}]),
        400,
        None,
    ),
    (
        "ollama embed: a chat model",
        "POST",
        "/api/embed",
        {"model": "tiny-a", "input": "hi"},
        400,
        None,
    ),
    ("ollama embed: empty list", "POST", "/api/embed", {"model": "minilm", "input": []}, 400, None),
    (
        "ollama embeddings: empty prompt",
        "POST",
        "/api/embeddings",
        {"model": "minilm", "prompt": ""},
        400,
        None,
    ),
    ("ollama chat: an embedding model", "POST", "/api/chat", ollama(model="minilm"), 400, None),
    # ---- embeddings (OpenAI's envelope) and the models of the other type ----
    ("embeddings: a chat model", "POST", "/v1/embeddings", embed(model="tiny-a"), 400, "model"),
    ("embeddings: empty list", "POST", "/v1/embeddings", embed(input=[]), 400, "input"),
    ("embeddings: empty string", "POST", "/v1/embeddings", embed(input=""), 400, "input"),
    (
        "embeddings: non-string item",
        "POST",
        "/v1/embeddings",
        embed(input=["a", 5]),
        400,
        "input[1]",
    ),
    (
        "embeddings: token id outside the vocabulary",
        "POST",
        "/v1/embeddings",
        embed(input=[[101, 102], [101, 999999]]),
        400,
        "input[1]",
    ),
    (
        "embeddings: more than max_embedding_inputs",
        "POST",
        "/v1/embeddings",
        embed(input=["a"] * 3),
        400,
        "input",
    ),
    (
        "embeddings: input too long",
        "POST",
        "/v1/embeddings",
        embed(input="word " * 300),
        400,
        "input",
    ),
    (
        "embeddings: other dimensions",
        "POST",
        "/v1/embeddings",
        embed(dimensions=64),
        400,
        "dimensions",
    ),
    (
        "ollama embed: other dimensions of a model not trained for them",
        "POST",
        "/api/embed",
        {"model": "minilm", "input": "a", "dimensions": 64},
        400,
        None,
    ),
    (
        "embeddings: bad encoding",
        "POST",
        "/v1/embeddings",
        embed(encoding_format="hex"),
        400,
        "encoding_format",
    ),
    (
        "chat: an embedding model",
        "POST",
        "/v1/chat/completions",
        chat(model="minilm"),
        400,
        "model",
    ),
    (
        "completions: an embedding model",
        "POST",
        "/v1/completions",
        text(model="minilm"),
        400,
        "model",
    ),
    ("messages: an embedding model", "POST", "/v1/messages", message(model="minilm"), 400, None),
    (
        "responses: an embedding model",
        "POST",
        "/v1/responses",
        response(model="minilm"),
        400,
        "model",
    ),
    ("ollama: unknown route", "GET", "/api/nothing", None, 404, None),
    # ---- the dashboard (/ui): its login, and /ui/api repeating the API's handlers ----
    ("ui login: no key", "POST", "/ui/login", {}, 400, "key"),
    ("ui login: key not a string", "POST", "/ui/login", {"key": 5}, 400, "key"),
    ("ui login: an unknown field", "POST", "/ui/login", {"key": "k", "admin": True}, 400, None),
    ("ui login: a list", "POST", "/ui/login", ["k"], 400, None),
    ("ui login: not JSON", "POST", "/ui/login", b"{not json", 400, None),
    ("GET on ui logout", "GET", "/ui/logout", None, 405, None),
    ("POST on ui session", "POST", "/ui/session", {"x": 1}, 405, None),
    ("ui: unknown page", "GET", "/ui/nothing", None, 404, None),
    ("ui static: unknown file", "GET", "/ui/static/js/nothing.js", None, 404, None),
    ("ui api: unknown route", "GET", "/ui/api/v2/everything", None, 404, None),
    ("ui api: a route it does not repeat", "POST", "/ui/api/v1/completions", text(), 404, None),
    ("ui api: POST on admin pool", "POST", "/ui/api/admin/pool", {"x": 1}, 405, None),
    ("ui api: admin load missing field", "POST", "/ui/api/admin/load", {}, 400, "model"),
    ("ui api: admin load unknown", "POST", "/ui/api/admin/load", {"model": "nope"}, 404, "model"),
    ("ui api: unload not a string", "POST", "/ui/api/admin/unload", {"model": 5}, 400, "model"),
    ("ui api: unknown model id", "GET", "/ui/api/v1/models/nope", None, 404, "model"),
    (
        "ui api: chat temperature above 2",
        "POST",
        "/ui/api/v1/chat/completions",
        chat(temperature=2.5, stream=True),
        400,
        "temperature",
    ),
    (
        "ui api: chat no messages",
        "POST",
        "/ui/api/v1/chat/completions",
        {"model": "tiny-a"},
        400,
        "messages",
    ),
    (
        "ui api: chat not JSON",
        "POST",
        "/ui/api/v1/chat/completions",
        b'{"model": "tiny-a", "messages": [',
        400,
        None,
    ),
    (
        "ui api: embeddings empty input",
        "POST",
        "/ui/api/v1/embeddings",
        embed(input=[]),
        400,
        "input",
    ),
    (
        "ui api: embeddings to a chat model",
        "POST",
        "/ui/api/v1/embeddings",
        embed(model="tiny-a"),
        400,
        "model",
    ),
]


@pytest.fixture(scope="module")
def daemon(tiny_models: Path, embedding_model: Path) -> Iterator[tuple[str, Any]]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\nmax_embedding_inputs: 2\n"
        f"models:\n  minilm: {{path: {embedding_model}}}\n"
    )
    with running_daemon(config) as served:
        yield served


def ui_csrf(client: httpx.Client) -> dict[str, str]:
    """The CSRF header of the dashboard's scripts: the cookie a page sets, echoed."""
    client.get("/ui/login")
    return {CSRF_HEADER: client.cookies[CSRF_COOKIE]}


def test_the_suite_has_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "status", "param"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input(
    daemon: tuple[str, Any],
    tiny_models: Path,
    name: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
) -> None:
    url, app = daemon
    with httpx.Client(base_url=url, timeout=30) as client:
        # The dashboard's POSTs pass Litestar's CSRF check first, as the page's scripts do.
        headers = ui_csrf(client) if path.startswith("/ui/") else {}
        if isinstance(body, bytes):
            headers["content-type"] = "application/json"
            response = client.request(method, path, content=body, headers=headers)
        else:
            response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == status, response.text
        body = response.json()
        if path.startswith("/v1/messages"):
            assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
            message = body["error"]["message"]
            assert param is None or param in message  # no `param` here: the message names it
        elif path.startswith("/api/"):
            assert set(body) == {"error"}
            message = body["error"]
            assert param is None or param in message
        else:
            error = body["error"]
            assert set(error) == {"message", "type", "param", "code"}
            message = error["message"]
            if param is not None:
                assert error["param"] == param
        assert isinstance(message, str) and message
        assert "Traceback" not in response.text
        assert str(tiny_models) not in response.text and "/tmp" not in response.text
        # Still serving, nothing left in flight.
        assert client.get("/v1/models").status_code == 200
    assert all(e.in_flight == 0 for e in app.state.daemon.pool.entries())


def test_sdk_sees_typed_errors(daemon: tuple[str, Any]) -> None:
    with openai.OpenAI(base_url=daemon[0] + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=OK_MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny-a", messages=OK_MESSAGES, temperature=9)  # type: ignore[arg-type]
        assert info.value.body["param"] == "temperature"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model="tiny-a", prompt="x " * 600)
        assert info.value.code == "context_length_exceeded"
        assert client.chat.completions.create(
            model="tiny-a", messages=OK_MESSAGES, max_tokens=2
        ).choices  # type: ignore[arg-type]
