"""Speculative decoding: a draft model (a registry id, per model in the config or per request
as mlx_lm.server names it) drafts tokens the model checks, through mlx_lm's
`speculative_generate_step`. The draft is a pool entry of its own, leased beside the model;
greedy answers are the model's own, whoever drafts. The real demo model, drafting for itself
and drafted for by a tiny random model that shares its tokenizer; through the openai SDK."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon, wait_until
from tinymodel import make_tiny_model

DEMO = "SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
TOKENS = 10


def _demo_tokenizer(demo: Path) -> Any:
    """Writes the demo model's tokenizer files into a folder; its vocabulary's size."""

    def write(folder: Path) -> int:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(demo / name, folder / name)
        return int(json.loads((demo / "config.json").read_text())["vocab_size"])

    return write


@pytest.fixture(scope="module")
def served(
    demo_model: Path, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, openai.OpenAI, Any]]:
    drafts = tmp_path_factory.mktemp("drafts")
    make_tiny_model(drafts / "scribble", seed=4, tokenizer=_demo_tokenizer(demo_model))
    config = (
        f"hf_cache: false\nmodel_dirs: [{demo_model.parent}, {tiny_models}, {drafts}]\n"
        "defaults: {temperature: 0}\n"
        "pool: {max_models: 3}\n"
        "models:\n"
        f"  drafted: {{model: {DEMO}, draft_model: scribble, num_draft_tokens: 2}}\n"
    )
    with (
        running_daemon(config) as (url, app),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120) as client,
    ):
        yield url, client, app


def _answer(client: openai.OpenAI, model: str = DEMO, **extra: Any) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=TOKENS,
        extra_body=extra,
    )
    return reply.choices[0].message.content or ""


def _drafting(app: Any) -> list[str | None]:
    """The drafts of the demo model's solo sequences, read on the engine thread."""
    engine = app.state.daemon.engine
    return asyncio.run(engine.call(lambda: [s.draft for s in engine._models[DEMO].solos]))


def _pool_ids(url: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in httpx.get(url + "/admin/pool").json()["entries"]}


def test_drafted_greedy_answers_are_the_models_own(
    served: tuple[str, openai.OpenAI, Any],
) -> None:
    url, client, _ = served
    plain = _answer(client)
    assert "Paris" in plain
    # the model drafting for itself: every draft accepted
    assert _answer(client, draft_model=DEMO, num_draft_tokens=3) == plain
    # a random model drafting: nearly every draft rejected, the answer the same
    assert _answer(client, draft_model="scribble") == plain
    # the draft is a pool entry of its own
    pool = _pool_ids(url)
    assert pool["scribble"]["state"] == "loaded"
    assert pool["scribble"]["kind"] == "model"
    assert pool["scribble"]["bytes"] > 0
    # per model in the config (shown per id); a request's num_draft_tokens 0 turns it off
    settings = httpx.get(url + "/v1/models/drafted").json()["settings"]
    assert (settings["draft_model"], settings["num_draft_tokens"]) == ("scribble", 2)
    assert _answer(client, "drafted") == plain
    assert _answer(client, "drafted", num_draft_tokens=0) == plain
    # streamed, and a text completion, alike
    stream = client.chat.completions.create(
        model="drafted",
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=TOKENS,
        stream=True,
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == plain
    prompt = "The capital of France is"
    text = client.completions.create(model=DEMO, prompt=prompt, max_tokens=6)
    drafted = client.completions.create(
        model=DEMO, prompt=prompt, max_tokens=6, extra_body={"draft_model": "scribble"}
    )
    assert drafted.choices[0].text == text.choices[0].text
    assert drafted.usage is not None and drafted.usage.completion_tokens == 6


def test_a_drafted_request_is_a_solo_sequence_until_its_client_leaves(
    served: tuple[str, openai.OpenAI, Any],
) -> None:
    url, client, app = served
    ends = {str(t): -100 for t in (0, 1, 2)}  # the demo's end-of-text ids: a long answer
    stream = client.chat.completions.create(
        model="drafted",
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=400,
        stream=True,
        logit_bias=ends,  # type: ignore[arg-type]
    )
    next(iter(stream))
    assert _drafting(app) == ["scribble"]
    assert _pool_ids(url)["scribble"]["in_flight"] == 1  # leased beside the model
    stream.close()
    wait_until(lambda: _drafting(app) == [], what="the solo sequence to end")
    wait_until(lambda: _pool_ids(url)["scribble"]["in_flight"] == 0, what="the draft's lease")


def test_a_constrained_answer_is_not_drafted(served: tuple[str, openai.OpenAI, Any]) -> None:
    _, client, _ = served
    schema = {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object"}}}
    reply = client.chat.completions.create(
        model="drafted",
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=TOKENS,
        response_format=schema,  # type: ignore[arg-type]
    )
    assert (reply.choices[0].message.content or "").startswith("{")


def test_a_draft_with_another_vocabulary_is_refused(
    served: tuple[str, openai.OpenAI, Any],
) -> None:
    _, client, _ = served
    with pytest.raises(openai.BadRequestError) as refused:
        _answer(client, draft_model="tiny-a")
    assert refused.value.body["param"] == "draft_model"  # type: ignore[index]
    assert "another vocabulary" in refused.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as unknown:
        _answer(client, draft_model="nope")
    assert unknown.value.body["param"] == "draft_model"  # type: ignore[index]
