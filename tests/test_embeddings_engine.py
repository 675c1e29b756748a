"""Embedding models on the real engine thread: the real all-MiniLM-L6-v2 against a NumPy
forward pass over the checkpoint (`embedref`), batches against single inputs, and a tiny
random decoder embedder (last-token pooling).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from embedref import CAT, KITTEN, STOCKS, reference_embedding
from tinymodel import make_tiny_model

from mlxrouter.engine import Engine, LoadSpec
from mlxrouter.engine.types import Embedded, EmbeddingRequest, Finished, Started
from mlxrouter.errors import InvalidRequestError


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
