"""End to end on the real SmolLM2-135M-Instruct: real uvicorn on loopback, the openai SDK."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon, spawned_daemon

pytestmark = pytest.mark.slow

DEMO = "SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def daemon(demo_model: Path, tiny_models: Path) -> Iterator[tuple[str, Any]]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{demo_model.parent}, {tiny_models}]\n"
        f"default_model: {DEMO}\npool: {{max_models: 2}}\n"
    )
    with running_daemon(config) as served:
        yield served


@pytest.fixture(scope="module")
def client(daemon: tuple[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=daemon[0] + "/v1", api_key="unused", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


def test_demo_model_is_listed_with_its_context(client: openai.OpenAI) -> None:
    models = {m.id: m.model_dump() for m in client.models.list().data}
    assert DEMO in models
    assert models[DEMO]["context_length"] == 8192


def test_capital_of_france_is_paris(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEMO, messages=FRANCE, temperature=0, max_tokens=20
    )  # type: ignore[arg-type]
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.model == DEMO


def test_streaming_yields_chunks_and_a_finish_reason(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=DEMO,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=20,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) > 3
    assert "Paris" in text
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=DEMO, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert "Paris" in reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 5


def test_max_tokens_and_stop_are_honoured(client: openai.OpenAI) -> None:
    short = client.chat.completions.create(model=DEMO, messages=FRANCE, temperature=0, max_tokens=3)  # type: ignore[arg-type]
    assert short.usage is not None and short.usage.completion_tokens == 3
    assert short.choices[0].finish_reason == "length"
    cut = client.chat.completions.create(
        model=DEMO,
        messages=FRANCE,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=20,
        stop=["Paris"],
    )
    assert cut.choices[0].finish_reason == "stop"
    assert "Paris" not in (cut.choices[0].message.content or "")


def test_missing_model_uses_default_model(daemon: tuple[str, Any]) -> None:
    body = {"messages": FRANCE, "temperature": 0, "max_tokens": 20}
    reply = httpx.post(daemon[0] + "/v1/chat/completions", json=body, timeout=120).json()
    assert reply["model"] == DEMO
    assert "Paris" in reply["choices"][0]["message"]["content"]


def test_switching_models_per_request(client: openai.OpenAI, tiny_models: Path) -> None:
    from mlx_lm import generate, load

    model, tokenizer = load(str(tiny_models / "tiny-a"))
    prompt = tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True)
    tiny_answer = generate(model, tokenizer, prompt, max_tokens=6)
    for _ in range(2):
        smol = client.chat.completions.create(
            model=DEMO, messages=FRANCE, temperature=0, max_tokens=20
        )  # type: ignore[arg-type]
        tiny = client.chat.completions.create(
            model="tiny-a", messages=FRANCE, temperature=0, max_tokens=6
        )  # type: ignore[arg-type]
        assert "Paris" in (smol.choices[0].message.content or "")
        assert tiny.choices[0].message.content == tiny_answer


def test_cli_serve_with_no_config_serves_the_demo(
    demo_model: Path, embedding_model: Path, tmp_path: Path
) -> None:
    """`mlxrouter serve` on a machine with no config, as the README's command runs it: the
    chat demo and the embedding demo beside it."""
    data = tmp_path / "data"
    shutil.copytree(demo_model, data / "models" / DEMO)
    shutil.copytree(embedding_model, data / "models" / embedding_model.name)
    env = {
        **os.environ,
        "MLXROUTER_DATA_DIR": str(data),
        "MLXROUTER_CONFIG_DIR": str(tmp_path / "no-config"),
    }
    with (
        spawned_daemon([], log=tmp_path / "serve.log", env=env) as (url, process),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
    ):
        ids = [m.id for m in client.models.list().data]
        assert DEMO in ids
        vector = client.embeddings.create(model=embedding_model.name, input="hello").data[0]
        assert len(vector.embedding) == 384
        reply = client.chat.completions.create(
            model=DEMO, messages=FRANCE, temperature=0, max_tokens=20
        )  # type: ignore[arg-type]
        assert "Paris" in (reply.choices[0].message.content or "")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, (tmp_path / "serve.log").read_text()
