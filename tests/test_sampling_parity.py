"""mlx_lm.server's sampling fields: XTC (`xtc_probability`, `xtc_threshold`, per request or
per model, seeded requests keyed like the rest of their sampler) and the penalties' look-back
(`presence_context_size`, `frequency_context_size`). Tiny random models through the openai
SDK; where the text matters, logit bias makes it predictable. And `/schema` documents every
new request field and per-model setting."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon
from tokenizers import Tokenizer


@pytest.fixture(scope="module")
def flat_model(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny-a` with its final norm zeroed: every logit is 0, so logit bias alone decides."""
    import mlx.core as mx

    folder = tmp_path_factory.mktemp("flat") / "flat"
    shutil.copytree(tiny_models / "tiny-a", folder)
    weights = mx.load(str(folder / "model.safetensors"))
    assert isinstance(weights, dict)
    weights["model.norm.weight"] = mx.zeros_like(weights["model.norm.weight"])
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    return folder


@pytest.fixture(scope="module")
def client(tiny_models: Path, flat_model: Path) -> Iterator[openai.OpenAI]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}, {flat_model.parent}]\n"
        "models: {eager: {model: tiny-a, xtc_probability: 1, xtc_threshold: 0.001}}\n"
    )
    with (
        running_daemon(config) as (url, _),
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60) as client,
    ):
        yield client


def _ids(tiny_models: Path, *texts: str) -> list[int]:
    tokenizer = Tokenizer.from_file(str(tiny_models / "tiny-a" / "tokenizer.json"))
    ids = [tokenizer.token_to_id(text) for text in texts]
    assert None not in ids
    return ids


def _completion(client: openai.OpenAI, model: str = "tiny-a", **fields: Any) -> Any:
    fields.setdefault("max_tokens", 8)
    fields.setdefault("prompt", "The quick brown fox")
    return client.completions.create(
        model=model,
        extra_body={k: v for k, v in fields.items() if k in EXTRA},
        **{k: v for k, v in fields.items() if k not in EXTRA},
    ).choices[0]


EXTRA = {"xtc_probability", "xtc_threshold", "presence_context_size", "frequency_context_size"}


def _never_the_top_choice(choice: Any, spared: set[str]) -> None:
    """XTC at probability 1 removes every token above the threshold but the least likely of
    them (newline and end-of-text are spared): no chosen token is the model's most likely."""
    logprobs = choice.logprobs
    assert logprobs.tokens
    for token, chosen, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        if token not in spared:
            assert chosen < max(top.values()), f"{token!r} was the top choice"


@pytest.mark.parametrize("seed", [None, 11])
def test_xtc_removes_the_top_choices(
    client: openai.OpenAI, tiny_models: Path, seed: int | None
) -> None:
    spared = {"\n", ""}
    (end,) = _ids(tiny_models, "<|im_end|>")
    common = {"logprobs": 1, "seed": seed, "temperature": 1.0, "logit_bias": {str(end): -100}}
    fields = {"xtc_probability": 1.0, "xtc_threshold": 0.001, **common}
    _never_the_top_choice(_completion(client, **fields), spared)
    # the model's settings do the same when the request names no XTC
    _never_the_top_choice(_completion(client, "eager", **common), spared)
    # greedy ignores XTC, as mlx_lm does
    greedy = _completion(client, **{**fields, "temperature": 0}).logprobs
    assert all(
        chosen == max(top.values())
        for chosen, top in zip(greedy.token_logprobs, greedy.top_logprobs, strict=True)
    )


def test_seeded_xtc_repeats(client: openai.OpenAI) -> None:
    fields = {"xtc_probability": 0.5, "xtc_threshold": 0.01, "seed": 5, "temperature": 1.0}
    assert _completion(client, **fields).text == _completion(client, **fields).text


def test_xtc_threshold_over_half_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="xtc_threshold"):
        _completion(client, xtc_probability=0.5, xtc_threshold=0.6)


@pytest.mark.parametrize(
    ("penalty", "y_bias", "last_only", "default"),
    [
        # said once, penalised by 2 while in the window
        ("presence", 49, "xyxyxy", "xyxxxx"),
        # penalised by 2 for each time it was said in the window
        ("frequency", 47, "xxxxxx", "xxyxyx"),
    ],
)
def test_penalty_context_size_is_the_look_back(
    client: openai.OpenAI,
    tiny_models: Path,
    penalty: str,
    y_bias: int,
    last_only: str,
    default: str,
) -> None:
    """Greedy on a model whose logits are all 0, `x` biased over `y`, a penalty of 2: what it
    writes shows which tokens the penalty looked back over, only the last one (size 1) or
    the default window (20)."""
    x, y = _ids(tiny_models, "x", "y")
    fields: dict[str, Any] = {
        "temperature": 0,
        "logit_bias": {str(x): 50, str(y): y_bias},
        f"{penalty}_penalty": 2.0,
        "max_tokens": 6,
        "prompt": "Hello",  # neither x nor y
    }
    one = {f"{penalty}_context_size": 1}
    assert _completion(client, "flat", **fields, **one).text == last_only
    assert _completion(client, "flat", **fields).text == default


def test_openapi_lists_the_fields(client: openai.OpenAI) -> None:
    """`/schema` documents the request fields and the per-model settings shown per id."""
    base = str(client.base_url).removesuffix("/").removesuffix("/v1")
    components = httpx.get(base + "/schema/openapi.json").json()["components"]["schemas"]
    fields = {*EXTRA, "draft_model", "num_draft_tokens"}
    for request in ("ChatCompletionRequest", "CompletionRequest"):
        assert fields <= set(components[request]["properties"]), request
    settings = {
        "chat_template",
        "context_length",
        "kv_bits",
        "kv_group_size",
        "quantized_kv_start",
        "draft_model",
        "num_draft_tokens",
        "xtc_probability",
        "xtc_threshold",
    }
    assert settings <= set(components["ModelSettings"]["properties"])
