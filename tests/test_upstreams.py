"""Remote upstreams end to end on loopback: daemon A serves models, daemon B lists them as
remote and forwards to A; both are real `mlxrouter serve` processes, clients are the real SDKs.

A serves the real SmolLM2 (for "Paris", and for a stream slow enough on a CPU, ~6 tokens/s, to
be cut while A is still generating) and two tiny random models. B serves `tiny-b` itself and
lists A twice: as upstream `a` (every id) and as `a2` (only `tiny-a`, prefixed `a2/`).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from _harness import start_mlxrouter, stop
from conftest import running_daemon, wait_until, watched_daemon
from imagedata import data_url, png
from tinymodel import make_tiny_adapter

from mlxrouter.config import parse_config
from mlxrouter.engine import GenerationRequest, SamplingParams
from mlxrouter.errors import ConfigError
from mlxrouter.remote import ChunkReader, request_body

DEMO = "SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
#: `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` in SmolLM2 and the tiny models alike: with
#: these barred, an answer runs to its max_tokens
NO_END = {"0": -100, "1": -100, "2": -100}


@dataclass
class Daemon:
    """A real `mlxrouter serve` process that can be stopped and started again on its port."""

    config: Path
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    url: str = ""

    def start(self) -> None:
        self.process, self.url = start_mlxrouter(
            ["--config", str(self.config), "--no-demo"],
            log=self.log,
            env=dict(os.environ),
            port=self.port,
        )
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, demo_model: Path, tiny_models: Path
) -> Iterator[tuple[Daemon, Daemon]]:
    root = tmp_path_factory.mktemp("upstreams")
    make_tiny_adapter(root / "lora", tiny_models / "tiny-a", base_ref="tiny-a", seed=3)
    (root / "a.yaml").write_text(
        f"hf_cache: false\nlog_file: false\nmodel_dirs: [{demo_model.parent}, {tiny_models}]\n"
        f"models: {{tiny-a-lora: {{path: {root / 'lora'}, base: tiny-a}}}}\n"
    )
    a = Daemon(root / "a.yaml", root / "a.log")
    a.start()
    (root / "b.yaml").write_text(
        "hf_cache: false\nlog_file: false\n"
        f"models: {{tiny-b: {{path: {tiny_models / 'tiny-b'}}}}}\n"
        "upstreams:\n"
        f"  - {{name: a, url: '{a.url}/v1', health_interval: 0.5}}\n"
        f"  - {{name: a2, url: '{a.url}/v1', prefix: a2/, models: [tiny-a]}}\n"
    )
    b = Daemon(root / "b.yaml", root / "b.log")
    try:
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


@pytest.fixture(scope="module")
def client(pair: tuple[Daemon, Daemon]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=pair[1].url + "/v1", api_key="x", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


def _cards(url: str) -> dict[str, dict[str, Any]]:
    data = httpx.get(url + "/v1/models", timeout=10).json()["data"]
    return {card["id"]: card for card in data}


def _in_flight(url: str, model: str) -> int:
    entries = httpx.get(url + "/admin/pool", timeout=10).json()["entries"]
    return sum(e["in_flight"] for e in entries if e["id"] == model)


def _metric(url: str, name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics (0 when it has none yet)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and set(match.group(1).split(",")) == set(wanted.split(",")):
            return float(match.group(2))
    return 0.0


# ---- federated /v1/models ---------------------------------------------------------------------


def test_b_lists_a_models_as_remote(pair: tuple[Daemon, Daemon]) -> None:
    cards = _cards(pair[1].url)
    assert cards["tiny-a"]["kind"] == "remote"
    assert cards["tiny-a"]["upstream"] == "a"
    assert cards["tiny-a"]["available"] is True
    assert cards[DEMO]["context_length"] == 8192  # A's card, passed on
    # B's own tiny-b wins over A's; `a2` serves only tiny-a, under its prefix.
    assert cards["tiny-b"]["kind"] == "model"
    assert cards["tiny-b"]["upstream"] is None
    assert cards["a2/tiny-a"]["upstream"] == "a2"
    assert "a2/tiny-b" not in cards
    assert "a2/" + DEMO not in cards


def test_a_adapters_and_loaded_flags_pass_through(
    pair: tuple[Daemon, Daemon], client: openai.OpenAI
) -> None:
    """A's adapter is listed with its base; asked for by id or through `adapters`, B forwards
    it and A answers with the adapter applied; A's `loaded` flags show through."""
    a, b = pair
    card = _cards(b.url)["tiny-a-lora"]
    assert (card["kind"], card["base"], card["upstream"]) == ("remote", "tiny-a", "a")
    assert card["loaded"] is False  # A has not loaded it yet
    assert "a2/tiny-a-lora" not in _cards(b.url)  # `a2` serves tiny-a only
    asked: dict[str, Any] = {"messages": FRANCE, "temperature": 0, "max_tokens": 8}
    with openai.OpenAI(base_url=a.url + "/v1", api_key="x", max_retries=0) as direct:
        expected = direct.chat.completions.create(model="tiny-a-lora", **asked)
    by_id = client.chat.completions.create(model="tiny-a-lora", **asked)
    by_field = client.chat.completions.create(
        model="tiny-a", extra_body={"adapters": "tiny-a-lora"}, **asked
    )
    answer = expected.choices[0].message.content
    assert by_id.choices[0].message.content == answer
    assert by_field.choices[0].message.content == answer
    wait_until(lambda: _cards(b.url)["tiny-a-lora"]["loaded"], what="A's loaded flag at B")


def test_remote_ids_cannot_be_loaded_here(pair: tuple[Daemon, Daemon]) -> None:
    answer = httpx.post(pair[1].url + "/admin/load", json={"model": "tiny-a"}, timeout=10)
    assert answer.status_code == 400
    assert "upstream `a`" in answer.json()["error"]["message"]


# ---- forwarding -------------------------------------------------------------------------------


def test_paris_through_b(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEMO,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=8,
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.model == DEMO
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_b_answers_what_a_answers(pair: tuple[Daemon, Daemon], client: openai.OpenAI) -> None:
    """Greedy answers of one model are the same through B as from A itself: chat (with the
    prefixed id of `a2` too) and text completions."""
    with openai.OpenAI(base_url=pair[0].url + "/v1", api_key="x", max_retries=0) as direct:
        asked: dict[str, Any] = {"messages": FRANCE, "temperature": 0, "max_tokens": 8}
        expected = direct.chat.completions.create(model="tiny-a", **asked)
        text = direct.completions.create(model="tiny-a", prompt="Hello", max_tokens=8, seed=1)
    for model in ("tiny-a", "a2/tiny-a"):
        reply = client.chat.completions.create(model=model, **asked)
        assert reply.choices[0].message.content == expected.choices[0].message.content
        assert reply.choices[0].finish_reason == expected.choices[0].finish_reason
        assert reply.model == model
    forwarded = client.completions.create(model="tiny-a", prompt="Hello", max_tokens=8, seed=1)
    assert forwarded.choices[0].text == text.choices[0].text


def test_stream_is_passed_on_chunk_by_chunk_and_a_drop_cancels_a(
    pair: tuple[Daemon, Daemon], client: openai.OpenAI
) -> None:
    a = pair[0]
    cut_before = _metric(a.url, "mlxrouter_requests_total", model=DEMO, status="499")
    stream = client.chat.completions.create(
        model=DEMO,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=200,  # ~30 s on a CPU: far longer than the checks below
        logit_bias=NO_END,
        stream=True,
    )
    with stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        # The first words are here while A is still generating the rest.
        assert _in_flight(a.url, DEMO) == 1
    # The client went: B closes its request to A, and A stops generating.
    wait_until(lambda: _in_flight(a.url, DEMO) == 0, timeout=30, what="A's generation to stop")
    wait_until(
        lambda: (
            _metric(a.url, "mlxrouter_requests_total", model=DEMO, status="499") == cut_before + 1
        ),
        what="A to record the request as cut by its client",
    )


def test_streamed_answer_equals_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model="tiny-a",
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,
    )
    assert whole.usage is not None
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model="tiny-a",
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_other_surfaces_reach_remote_models(pair: tuple[Daemon, Daemon]) -> None:
    """Anthropic, Responses and Ollama requests go through the same forwarding path."""
    b = pair[1].url
    with anthropic.Anthropic(base_url=b, api_key="x", max_retries=0, timeout=60) as sdk:
        message = sdk.messages.create(
            model="tiny-a",
            max_tokens=6,
            messages=[{"role": "user", "content": "Hello"}],
        )
    assert message.model == "tiny-a"
    assert message.usage.output_tokens > 0
    with openai.OpenAI(base_url=b + "/v1", api_key="x", max_retries=0) as sdk_openai:
        response = sdk_openai.responses.create(model="tiny-a", input="Hello", max_output_tokens=6)
    assert response.usage is not None
    assert response.usage.output_tokens > 0
    with ollama.Client(host=b, timeout=60) as sdk_ollama:
        chat = sdk_ollama.chat(
            model="tiny-a",
            messages=[{"role": "user", "content": "Hello"}],
            options={"num_predict": 6, "temperature": 0},
        )
    assert chat.done


def test_images_are_refused_for_remote_models_not_dropped(client: openai.OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": data_url(png())}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny-a",  # a's, served through the upstream
            messages=[{"role": "user", "content": [image]}],  # type: ignore[list-item]
            max_tokens=1,
        )
    body: dict[str, Any] = info.value.body  # type: ignore[assignment]
    assert body["param"] == "messages[0].content[0]"
    assert "images are not forwarded to upstreams" in body["message"]


def test_anthropic_max_tokens_beyond_the_context_is_capped_as_locally(
    pair: tuple[Daemon, Daemon],
) -> None:
    """Claude Code asks for 32000 tokens whatever the model: a local model caps that to its
    context's room, and so does a remote one (the upstream's own default, which fits)."""
    with (
        anthropic.Anthropic(base_url=pair[1].url, api_key="x", max_retries=0) as sdk,
        sdk.messages.stream(  # the SDK streams requests this large
            model="tiny-a",  # a 256-token context
            max_tokens=32000,
            messages=[{"role": "user", "content": "Hello"}],
        ) as stream,
    ):
        message = stream.get_final_message()
    assert 0 < message.usage.output_tokens < 256


def test_upstream_errors_keep_their_message_in_each_envelope(pair: tuple[Daemon, Daemon]) -> None:
    """A's refusal (the prompt and max_tokens beyond the tiny model's 256-token context) comes
    back as a 400 in the envelope of the API the client speaks, naming the upstream."""
    b = pair[1].url
    body = {"model": "tiny-a", "messages": FRANCE, "max_tokens": 1000}
    openai_error = httpx.post(b + "/v1/chat/completions", json=body, timeout=30)
    assert openai_error.status_code == 400
    error = openai_error.json()["error"]
    assert error["code"] == "upstream_rejected"
    assert error["message"].startswith("The upstream `a`: ")
    assert "context" in error["message"]
    ollama_error = httpx.post(
        b + "/api/chat",
        json={"model": "tiny-a", "messages": FRANCE, "options": {"num_predict": 1000}},
        timeout=30,
    )
    assert ollama_error.status_code == 400
    assert "upstream `a`" in ollama_error.json()["error"]


def test_metrics_per_upstream(pair: tuple[Daemon, Daemon], client: openai.OpenAI) -> None:
    b = pair[1].url
    before = _metric(b, "mlxrouter_upstream_requests_total", upstream="a2", status="200")
    client.chat.completions.create(
        model="a2/tiny-a",
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=2,
    )
    assert _metric(b, "mlxrouter_upstream_requests_total", upstream="a2", status="200") == (
        before + 1
    )
    assert _metric(b, "mlxrouter_upstream_response_seconds_count", upstream="a2") >= 1
    assert _metric(b, "mlxrouter_upstream_up", upstream="a") == 1


def test_config_edits_add_and_remove_upstreams(pair: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    """An upstream added to a watched config is polled and listed; removed, its ids go."""
    config = tmp_path / "config.yaml"
    config.write_text("hf_cache: false\n")
    with watched_daemon(config) as (url, _):
        assert "tiny-a" not in _cards(url)
        config.write_text(
            f"hf_cache: false\nupstreams: [{{name: a, url: '{pair[0].url}/v1', prefix: x/}}]\n"
        )
        wait_until(lambda: "x/tiny-a" in _cards(url), what="the new upstream's ids")
        assert _cards(url)["x/tiny-a"]["upstream"] == "a"
        config.write_text("hf_cache: false\n")
        wait_until(lambda: "x/tiny-a" not in _cards(url), what="the removed upstream's ids to go")


# ---- A goes away and comes back (last: it stops A) --------------------------------------------


def test_a_stopped_is_502_and_down_then_recovers(
    pair: tuple[Daemon, Daemon], client: openai.OpenAI
) -> None:
    a, b = pair
    a.stop()
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model="tiny-a",
            messages=FRANCE,  # type: ignore[arg-type]
            max_tokens=2,
        )
    assert failed.value.status_code == 502
    error = failed.value.body
    assert isinstance(error, dict)
    assert error["code"] == "upstream_unavailable"
    assert "`a`" in error["message"]
    assert "127.0.0.1" not in error["message"]  # the upstream's name, not its address
    # Known at once, not at the next poll.
    assert _cards(b.url)["tiny-a"]["available"] is False
    health = httpx.get(b.url + "/health", timeout=10)
    assert health.status_code == 503
    assert "upstream `a` is down: unreachable" in health.json()["reasons"]
    assert _cards(b.url)["tiny-b"]["available"] is True  # B's own model is not affected

    a.start()  # on the same port, as a restarted machine would be
    wait_until(lambda: _cards(b.url)["tiny-a"]["available"], timeout=30, what="B to see A again")
    reply = client.chat.completions.create(
        model="tiny-a",
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=2,
    )
    assert reply.choices[0].message.content is not None
    wait_until(lambda: httpx.get(b.url + "/health", timeout=10).status_code == 200)


# ---- an upstream that accepts connections and never answers -----------------------------------


@pytest.fixture
def silent_upstream() -> Iterator[str]:
    """A listening socket that never accepts: connections complete in the kernel's backlog
    and requests sent there never get an answer."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_an_upstream_that_does_not_answer_is_504(silent_upstream: str) -> None:
    config = (
        "hf_cache: false\nupstreams:\n"
        f"  - {{name: mute, url: '{silent_upstream}', timeout: 1, models: [m]}}\n"
    )
    with running_daemon(config) as (url, _):
        card = _cards(url)["m"]  # named in the config: listed, though never reached
        assert (card["kind"], card["available"]) == ("remote", False)
        assert (
            "upstream `mute` is down: no answer within 1s"
            in httpx.get(url + "/health", timeout=10).json()["reasons"]
        )
        started = time.monotonic()
        answer = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m", "messages": FRANCE, "stream": True},
            timeout=30,
        )
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "upstream_timeout"
        assert "`mute`" in answer.json()["error"]["message"]
        assert time.monotonic() - started < 20  # its timeout, not the client's


# ---- the translation, on its own ---------------------------------------------------------------


def test_request_body_carries_what_the_request_set() -> None:
    request = GenerationRequest(
        messages=[
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {}}}
                ],
            }
        ],
        max_tokens=5,
        stop=("x",),
        sampling=SamplingParams(temperature=0.0, top_k=3, seed=7, logit_bias={2: -100.0}),
        logprobs=2,
        json_schema={"type": "object"},
        chat_template_kwargs={"enable_thinking": False},
    )
    body = request_body("upstream-id", request)
    assert body["model"] == "upstream-id"
    assert body["stream"] is True
    assert body["messages"][0]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert (body["max_tokens"], body["stop"], body["temperature"]) == (5, ["x"], 0.0)
    assert (body["top_k"], body["seed"], body["logit_bias"]) == (3, 7, {"2": -100.0})
    assert "min_p" not in body  # left at its default: servers without the extension accept it
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    assert body["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    capped = GenerationRequest(prompt="x", max_tokens=32000, cap_max_tokens=True)
    assert "max_tokens" not in request_body("m", capped, context=8192)
    assert "max_tokens" not in request_body("m", capped)  # the context is not known
    fits = GenerationRequest(prompt="x", max_tokens=100, cap_max_tokens=True)
    assert request_body("m", fits, context=8192)["max_tokens"] == 100


def test_streamed_tool_calls_are_assembled() -> None:
    reader = ChunkReader("u", chat=True)
    pieces = [
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1",'
        '"function":{"name":"get","arguments":"{\\"ci"}}]}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
        '"function":{"arguments":"ty\\": 1}"}}]},"finish_reason":"tool_calls"}]}',
        '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
    ]
    for piece in pieces:
        assert reader.feed("data: " + piece) == []
    calls = reader.feed("data: [DONE]")
    assert calls[0].tool_calls[0].name == "get"  # type: ignore[union-attr]
    assert calls[0].tool_calls[0].arguments == '{"city": 1}'  # type: ignore[union-attr]
    finished = reader.feed("data: [DONE]")[0]
    assert (finished.finish_reason, finished.completion_tokens) == ("tool_calls", 4)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        (
            "[{name: a, url: 'ftp://h/v1'}]",
            "`upstreams.0.url` must be an http(s) URL ending in /v1",
        ),
        (
            "[{name: a, url: 'http://h:1'}]",
            "`upstreams.0.url` must be an http(s) URL ending in /v1",
        ),
        ("[{name: a, url: 'http://h/v1'}, {name: a, url: 'http://g/v1'}]", "different `name`"),
        ("[{name: a, url: 'http://h/v1', timeout: 0}]", "`upstreams.0.timeout`"),
        ("[{name: a, url: 'http://h/v1', token: x}]", "token"),
    ],
)
def test_bad_upstream_config_names_the_key(upstreams: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(f"upstreams: {upstreams}")
