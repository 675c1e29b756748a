"""Embeddings end to end: the real all-MiniLM-L6-v2 beside a tiny chat model in one real
uvicorn-served daemon, through the `openai` SDK (base64 by default, and floats), the `ollama`
package and Ollama's older `/api/embeddings`; what `/v1/models`, `/api/show` and `/admin/pool`
say about it; an embedding job and a chat stream on the same engine thread."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest
from conftest import running_daemon
from embedref import CAT, KITTEN, STOCKS, reference_embedding

MINILM = "all-MiniLM-L6-v2"
#: MiniLM's files under a model card that declares Matryoshka training, as sentence-transformers
#: writes it (the tag alone; the weights are MiniLM's, so its prefixes are not trained ones)
MRL = "minilm-matryoshka"
#: MiniLM's files as a NomicBERT checkpoint would name itself: an architecture not run here
NOMIC = "nomic-like"
CARD = "---\nlibrary_name: sentence-transformers\ntags:\n- loss:MatryoshkaLoss\n---\n# card\n"


def variant(source: Path, target: Path, *, config: dict[str, Any], readme: str = "") -> Path:
    """`source`'s files (its weights linked, not copied) with config.json keys replaced."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    (target / "model.safetensors").symlink_to(source / "model.safetensors")
    merged = json.loads((source / "config.json").read_text()) | config
    (target / "config.json").write_text(json.dumps(merged))
    if readme:
        (target / "README.md").write_text(readme)
    return target


@pytest.fixture(scope="module")
def daemon(
    tiny_models: Path, embedding_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    root = tmp_path_factory.mktemp("variants")
    mrl = variant(embedding_model, root / MRL, config={}, readme=CARD)
    nomic = variant(
        embedding_model,
        root / NOMIC,
        config={"architectures": ["NomicBertModel"], "model_type": "nomic_bert"},
    )
    config = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
        f"models:\n  {MINILM}: {{path: {embedding_model}}}\n"
        f"  {MRL}: {{path: {mrl}}}\n  {NOMIC}: {{path: {nomic}}}\n"
    )
    with running_daemon(config) as served:
        yield served


@pytest.fixture
def client(daemon: tuple[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{daemon[0]}/v1", api_key="unused", max_retries=0) as made:
        yield made


@pytest.fixture
def http(daemon: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon[0], timeout=120) as made:
        yield made


def check_minilm(vectors: np.ndarray, embedding_model: Path) -> None:
    """384 dimensions, unit norm, the reference's direction, similar closer than unrelated."""
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for text, vector in zip((CAT, KITTEN, STOCKS), vectors, strict=True):
        assert float(vector @ reference_embedding(embedding_model, text)) > 1 - 1e-3
    assert vectors[0] @ vectors[1] - vectors[0] @ vectors[2] >= 0.3


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_openai_sdk_embeddings(client: openai.OpenAI, embedding_model: Path, encoding: str) -> None:
    """The SDK asks for base64 unless told otherwise, and decodes it; both give the vectors."""
    if encoding == "float":
        answer = client.embeddings.create(
            model=MINILM, input=[CAT, KITTEN, STOCKS], encoding_format="float"
        )
    else:
        answer = client.embeddings.create(model=MINILM, input=[CAT, KITTEN, STOCKS])
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert answer.model == MINILM
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0
    check_minilm(np.array([d.embedding for d in answer.data]), embedding_model)


def test_token_id_inputs_and_raw_base64(http: httpx.Client) -> None:
    """Token-id lists embed like their text; base64 is little-endian float32."""
    ids = [101, 1037, 4937, 7719, 2006, 1996, 13523, 102]  # "A cat sits on the mat" by MiniLM
    body = {"model": MINILM, "input": [ids, CAT], "encoding_format": "base64"}
    answer = http.post("/v1/embeddings", json=body).json()
    by_ids, by_text = (
        np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in answer["data"]
    )
    assert by_ids.shape == (384,)
    assert np.abs(by_ids - by_text).max() < 1e-5
    assert answer["usage"]["prompt_tokens"] == 2 * len(ids)


def test_ollama_embed_and_the_older_embeddings(
    daemon: tuple[str, Any], http: httpx.Client, embedding_model: Path
) -> None:
    with ollama.Client(host=daemon[0], timeout=120) as sdk:
        answer = sdk.embed(model=MINILM, input=[CAT, KITTEN, STOCKS])
        # Ollama truncates by default: a text past the limit still embeds
        long = sdk.embed(model=MINILM, input="word " * 400)
    assert len(long.embeddings[0]) == 384
    check_minilm(np.array(answer.embeddings), embedding_model)
    assert answer.prompt_eval_count and answer.prompt_eval_count > 0
    older = http.post("/api/embeddings", json={"model": f"{MINILM}:latest", "prompt": CAT})
    assert older.status_code == 200, older.text
    assert np.abs(np.array(older.json()["embedding"]) - answer.embeddings[0]).max() < 1e-5


def test_cards_show_and_pool_say_what_the_model_is(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    client.embeddings.create(model=MINILM, input="load it")
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    card = cards[MINILM]
    assert (card["type"], card["dimensions"], card["max_input_tokens"]) == ("embedding", 384, 256)
    assert card["capabilities"] == ["embeddings"]
    assert cards["tiny-a"]["type"] == "chat"
    shown = http.post("/api/show", json={"model": MINILM}).json()
    assert shown["capabilities"] == ["embedding"]
    pool = {e["id"]: e for e in http.get("/admin/pool").json()["entries"]}
    assert pool[MINILM]["type"] == "embedding"


def test_an_indexing_job_and_a_chat_stream_share_the_engine(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chat stream that has started keeps its lease and finishes whole while an embedding
    job of several batches runs to completion beside it. (Batches are bounded to 64 padded
    tokens here, so a job small enough for a CPU still takes several engine turns.)"""
    from mlxrouter.engine import embedding

    monkeypatch.setattr(embedding, "BATCH_TOKENS", 64)
    stream = client.chat.completions.create(
        model="tiny-a",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=64,
        temperature=0,
        logit_bias={"2": -100},  # the tiny model's end of sequence: it writes all 64 tokens
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        chunks = iter(stream)
        next(chunks)
        texts = [f"document {i} " + "word " * (i % 7) for i in range(24)]
        job = client.embeddings.create(model=MINILM, input=texts, encoding_format="float")
        rest = list(chunks)
    assert len(job.data) == 24
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == 64
    vectors = np.array([job.data[i].embedding for i in (0, 23)])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_least_recently_used_eviction_across_types(
    client: openai.OpenAI, http: httpx.Client
) -> None:
    """`max_models: 2` (the default) with two chat models and an embedding model: each load
    evicts the least recently used entry, whatever its type."""

    def chat(model: str) -> None:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )

    def loaded() -> dict[str, str]:
        return {e["id"]: e["type"] for e in http.get("/admin/pool").json()["entries"]}

    chat("tiny-a")
    chat("tiny-b")
    assert loaded() == {"tiny-a": "chat", "tiny-b": "chat"}
    client.embeddings.create(model=MINILM, input="evicts tiny-a")
    assert loaded() == {"tiny-b": "chat", MINILM: "embedding"}
    chat("tiny-b")
    chat("tiny-a")  # the embedding model is now the least recently used
    assert loaded() == {"tiny-a": "chat", "tiny-b": "chat"}


def test_dimensions_shorten_only_a_matryoshka_models_vectors(
    daemon: tuple[str, Any], client: openai.OpenAI, http: httpx.Client
) -> None:
    """A model whose card declares Matryoshka training gives the first `dimensions` of its
    vector, normalised again, on both surfaces; any other model answers 400 naming
    `dimensions` in its surface's error shape, unless it asks for the model's own length."""
    full = client.embeddings.create(model=MRL, input=[CAT, KITTEN], encoding_format="float")
    whole = np.array([d.embedding for d in full.data])
    expected = whole[:, :128] / np.linalg.norm(whole[:, :128], axis=1, keepdims=True)
    short = client.embeddings.create(model=MRL, input=[CAT, KITTEN], dimensions=128)
    vectors = np.array([d.embedding for d in short.data])
    assert vectors.shape == (2, 128)
    assert np.abs(vectors - expected).max() < 1e-5
    with ollama.Client(host=daemon[0], timeout=120) as sdk:
        shown = sdk.embed(model=MRL, input=CAT, dimensions=128)
    assert np.abs(np.array(shown.embeddings[0]) - expected[0]).max() < 1e-5

    own = client.embeddings.create(model=MINILM, input=CAT, dimensions=384)
    assert len(own.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MINILM, input=CAT, dimensions=128)
    assert refused.value.body["param"] == "dimensions"  # type: ignore[index]
    for model, dimensions in ((MRL, 0), (MRL, 385)):
        answer = http.post(
            "/v1/embeddings", json={"model": model, "input": CAT, "dimensions": dimensions}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "dimensions"
    ollama_refused = http.post(
        "/api/embed", json={"model": MINILM, "input": CAT, "dimensions": 128}
    )
    assert ollama_refused.status_code == 400
    assert "`dimensions`" in ollama_refused.json()["error"]


def test_an_encoder_architecture_not_run_here_is_listed_unavailable(
    daemon: tuple[str, Any], client: openai.OpenAI, http: httpx.Client
) -> None:
    """Listed with `available: false`; a request to it is a 400 saying why, on each surface,
    and the daemon goes on serving."""
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert (cards[NOMIC]["type"], cards[NOMIC]["available"]) == ("embedding", False)
    assert cards[MINILM]["available"] is True
    assert (cards[MRL]["matryoshka"], cards[MINILM]["matryoshka"]) == (True, False)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=NOMIC, input=CAT)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_supported"
    assert "NomicBertModel" in error["message"]
    with (
        ollama.Client(host=daemon[0], timeout=120) as sdk,
        pytest.raises(ollama.ResponseError) as ollama_refused,
    ):
        sdk.embed(model=NOMIC, input=CAT)
    assert ollama_refused.value.status_code == 400
    assert "NomicBertModel" in ollama_refused.value.error
    assert NOMIC not in {e["id"] for e in http.get("/admin/pool").json()["entries"]}
    assert len(client.embeddings.create(model=MINILM, input=CAT).data) == 1
