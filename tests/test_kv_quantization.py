"""KV-cache quantization per model (`kv_bits`, `kv_group_size`, `quantized_kv_start`) through
mlx_lm's quantized caches: answers stay coherent (the real demo model still says Paris), the
prompt cache keeps the smaller quantized caches and reuses them for a follow-up, and such a
request, which mlx_lm's batch cannot take, runs beside batched ones."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon
from tinymodel import make_tiny_model

DEMO = "SmolLM2-135M-Instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
ASK = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def served(
    demo_model: Path, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[openai.OpenAI, Any]]:
    kv_models = tmp_path_factory.mktemp("kv-models")
    # heads of 64 (a KV group must divide the head size), and room for a long answer
    make_tiny_model(kv_models / "wide", seed=3, hidden=256, context=4096)
    config = (
        f"hf_cache: false\nmodel_dirs: [{demo_model.parent}, {tiny_models}, {kv_models}]\n"
        "defaults: {temperature: 0}\n"
        "pool: {max_models: 3}\n"
        "models:\n"
        f"  {DEMO}: {{kv_bits: 8, kv_group_size: 32, quantized_kv_start: 0}}\n"
        "  wide-q4: {model: wide, kv_bits: 4, quantized_kv_start: 0}\n"
        # mlx_lm's start, 5000 tokens (and caches apart from wide-q4's: another group size)
        "  wide-late: {model: wide, kv_bits: 4, kv_group_size: 32}\n"
        "  wide-bad-group: {model: wide, kv_bits: 4, kv_group_size: 128}\n"
    )
    with (
        running_daemon(config) as (url, app),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120) as client,
    ):
        yield client, app


def _prefix_bytes(app: Any, key: str) -> int:
    """Bytes the entry's prompt cache holds, read on the engine thread."""
    engine = app.state.daemon.engine
    return asyncio.run(engine.call(lambda: int(engine._models[key].prefix.nbytes)))


def _ask(client: openai.OpenAI, model: str, **fields: Any) -> Any:
    fields.setdefault("max_tokens", 8)
    return client.chat.completions.create(model=model, messages=ASK, **fields)


def test_demo_model_with_an_8_bit_kv_cache_says_paris(
    served: tuple[openai.OpenAI, Any],
) -> None:
    client, _ = served
    reply = client.chat.completions.create(model=DEMO, messages=FRANCE, max_tokens=12)  # type: ignore[arg-type]
    assert "Paris" in (reply.choices[0].message.content or "")
    stream = client.chat.completions.create(
        model=DEMO,
        messages=FRANCE,  # type: ignore[arg-type]
        max_tokens=12,
        stream=True,
    )
    assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in stream)


def test_the_prompt_cache_keeps_the_smaller_quantized_caches(
    served: tuple[openai.OpenAI, Any],
) -> None:
    client, app = served
    plain = _ask(client, "wide")  # loads it
    before = _prefix_bytes(app, "wide")
    late = _ask(client, "wide-late")  # quantized only past 5000 tokens: full size
    assert late.choices[0].message.content == plain.choices[0].message.content
    full = _prefix_bytes(app, "wide") - before
    assert full > 0
    before = _prefix_bytes(app, "wide")
    first = _ask(client, "wide-q4")
    quantized = _prefix_bytes(app, "wide") - before
    assert 0 < quantized < full / 3  # 4 bits (and group scales) for 32-bit floats
    base = str(client.base_url).removesuffix("/")
    settings = httpx.get(base + "/models/wide-q4").json()["settings"]
    assert (settings["kv_bits"], settings["quantized_kv_start"]) == (4, 0)
    # a follow-up reuses the quantized prefix
    follow = client.chat.completions.create(
        model="wide-q4",
        messages=[*ASK, first.choices[0].message.model_dump(), *ASK],  # type: ignore[list-item]
        max_tokens=4,
    )
    assert follow.usage is not None and follow.usage.prompt_tokens_details is not None
    assert follow.usage.prompt_tokens_details.cached_tokens > 0


def test_a_group_size_that_does_not_fit_the_heads_is_a_clear_error(
    served: tuple[openai.OpenAI, Any],
) -> None:
    client, _ = served
    with pytest.raises(openai.InternalServerError) as bad:
        _ask(client, "wide-bad-group")
    assert bad.value.body["code"] == "config_error"  # type: ignore[index]
    assert "kv_group_size" in bad.value.body["message"]  # type: ignore[index]


def test_a_quantized_request_runs_beside_batched_ones(
    served: tuple[openai.OpenAI, Any], tiny_models: Path
) -> None:
    """A long solo sequence is stepped between the batch steps of other models: a short
    request to another model, sent once the long one streams, ends well before it."""
    client, _ = served
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_models / "tiny-a" / "tokenizer.json"))
    end = tokenizer.token_to_id("<|im_end|>")
    done: dict[str, float] = {}
    tokens: list[int] = []

    def long_answer() -> None:
        stream = _ask(
            client,
            "wide-q4",
            max_tokens=1500,
            stream=True,
            stream_options={"include_usage": True},
            logit_bias={str(end): -100},
        )
        for chunk in stream:
            if chunk.usage is not None:
                tokens.append(chunk.usage.completion_tokens)
        done["long"] = time.monotonic()

    _ask(client, "tiny-b", max_tokens=1)  # loaded before the race
    runner = threading.Thread(target=long_answer)
    runner.start()
    time.sleep(0.5)
    assert "long" not in done
    _ask(client, "tiny-b", max_tokens=4)
    done["short"] = time.monotonic()
    runner.join(120)
    assert tokens == [1500]
    assert done["short"] < done["long"]
