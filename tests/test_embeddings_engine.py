"""Embedding models on the real engine thread: the real all-MiniLM-L6-v2 against a NumPy
forward pass written here from the checkpoint alone, batches against single inputs, and a tiny
random decoder embedder (last-token pooling).

What the reference proves: `reference_embedding` shares no code with mlxrouter. It reads the
safetensors with NumPy, runs BERT's published equations (post-norm layers, exact-erf GELU,
masked softmax) and pools as the model's `1_Pooling/config.json` and `modules.json` say (mean
over the real tokens, then L2). Only the tokenizer is shared (the model's own tokenizer.json,
read by the `tokenizers` library). Agreement to 1e-5 in cosine shows the MLX encoder, its
weight loading, masking, pooling and normalisation compute the sentence-transformers model.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from tinymodel import make_tiny_model

from mlxrouter.engine import Engine, LoadSpec
from mlxrouter.engine.types import Embedded, EmbeddingRequest, Finished, Started
from mlxrouter.errors import InvalidRequestError

CAT, KITTEN, STOCKS = (
    "A cat sits on the mat",
    "A kitten is sitting on a rug",
    "Stock markets fell sharply today",
)
_erf = np.vectorize(math.erf)


def reference_embedding(folder: Path, text: str) -> np.ndarray:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    config = json.loads((folder / "config.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads every text to 128 tokens
    ids = tokenizer.encode(text).ids
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    e = "embeddings"
    x = (
        w[f"{e}.word_embeddings.weight"][ids]
        + w[f"{e}.position_embeddings.weight"][: len(ids)]
        + w[f"{e}.token_type_embeddings.weight"][0]
    )
    x = norm(x.astype(np.float64), f"{e}.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        split = [
            linear(x, f"{p}.attention.self.{n}").reshape(len(ids), heads, -1).transpose(1, 0, 2)
            for n in ("query", "key", "value")
        ]
        q, k, v = split
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ v
        attended = attended.transpose(1, 0, 2).reshape(len(ids), -1)
        x = norm(
            linear(attended, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm"
        )
        inner = linear(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1 + _erf(inner / math.sqrt(2)))
        x = norm(linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"]
    assert any("Normalize" in m["type"] for m in json.loads((folder / "modules.json").read_text()))
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(prompt_cache_bytes=0)
    yield engine
    engine.close()


async def embed(engine: Engine, key: str, *inputs: str | tuple[int, ...]) -> np.ndarray:
    stream = await engine.generate(key, EmbeddingRequest(inputs=inputs))
    events = [event async for event in stream]
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    (answer,) = [e for e in events if isinstance(e, Embedded)]
    return np.asarray(answer.vectors)


async def test_minilm_matches_an_independent_numpy_forward_pass(
    engine: Engine, embedding_model: Path
) -> None:
    await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
    vectors = await embed(engine, "minilm", CAT, KITTEN, STOCKS)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for text, vector in zip((CAT, KITTEN, STOCKS), vectors, strict=True):
        assert float(vector @ reference_embedding(embedding_model, text)) > 1 - 1e-5
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar - unrelated >= 0.3


async def test_one_input_alone_equals_it_inside_a_batch_of_mixed_lengths(
    engine: Engine, embedding_model: Path
) -> None:
    await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
    alone = await embed(engine, "minilm", KITTEN)
    mixed = ["hi", KITTEN, "a much longer sentence " * 12, STOCKS]
    # Two requests in flight together share the model's queue and its batches.
    batched, other = await asyncio.gather(
        embed(engine, "minilm", *mixed), embed(engine, "minilm", "x " * 40)
    )
    assert other.shape == (1, 384)
    assert np.abs(batched[1] - alone[0]).max() < 1e-5


async def test_token_ids_and_limits(engine: Engine, embedding_model: Path) -> None:
    await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embedding_model / "tokenizer.json"))
    tokenizer.no_padding()
    ids = tuple(tokenizer.encode(CAT).ids)
    by_ids, by_text = await embed(engine, "minilm", ids), await embed(engine, "minilm", CAT)
    assert np.abs(by_ids - by_text).max() < 1e-5

    with pytest.raises(InvalidRequestError) as outside:
        await engine.generate("minilm", EmbeddingRequest(inputs=(CAT, (1, 30522))))
    assert outside.value.param == "input[1]"
    with pytest.raises(InvalidRequestError) as long:
        await engine.generate("minilm", EmbeddingRequest(inputs=("word " * 300,)))
    assert long.value.param == "input"
    truncated = await engine.generate(
        "minilm", EmbeddingRequest(inputs=("word " * 300,), truncate=True)
    )
    events = [event async for event in truncated]
    assert isinstance(events[0], Started) and events[0].prompt_tokens == 256


async def test_a_decoder_embedder_pools_the_last_token_alone_as_in_a_batch(
    engine: Engine, tmp_path: Path
) -> None:
    folder = make_tiny_model(tmp_path / "decoder", seed=3)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_lasttoken": True})
    )
    await engine.load(LoadSpec("decoder", folder, embedding=True))
    alone = await embed(engine, "decoder", "hello there")
    batched = await embed(engine, "decoder", "a b c d e f g h i j k l", "hello there", "x")
    assert batched.shape == (3, 32)
    assert np.abs(batched[1] - alone[0]).max() < 1e-5
