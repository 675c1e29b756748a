"""Embedding models on the real engine thread: the real all-MiniLM-L6-v2 and a tiny random
XLM-RoBERTa against a NumPy forward pass over the checkpoint (`embedref`), batches against
single inputs, a tiny random decoder embedder (last-token pooling), and their loads: a slice
of weights per engine step beside a chat stream, tokenizers kept on the engine's shelf.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from embedref import CAT, KITTEN, STOCKS, make_tiny_xlm_roberta, reference_embedding
from tinymodel import make_tiny_model

from mlxrouter.engine import Chunk, Engine, GenerationRequest, LoadSpec, SamplingParams
from mlxrouter.engine.types import Embedded, EmbeddingRequest, Finished, Started
from mlxrouter.errors import InvalidRequestError, ModelLoadError


@pytest.fixture
def token_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches bounded by `BATCH_TOKENS` alone, as on a fast device: on this CPU the time
    bound would make every batch one input, and the padding tests would pad nothing."""
    from mlxrouter.engine import embedding

    monkeypatch.setattr(embedding, "ALONE_BATCH_SECONDS", 1e9)
    monkeypatch.setattr(embedding, "PROBE_TOKENS", embedding.BATCH_TOKENS)


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


@pytest.mark.usefixtures("token_bounded")
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


@pytest.mark.usefixtures("token_bounded")
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


@pytest.mark.usefixtures("token_bounded")
async def test_xlm_roberta_matches_the_numpy_forward_pass(
    engine: Engine, embedding_model: Path, tmp_path: Path
) -> None:
    """XLM-RoBERTa is BERT whose positions start after the padding id: a random checkpoint
    agrees with the reference alone and inside a padded batch."""
    folder = make_tiny_xlm_roberta(tmp_path / "xlmr", embedding_model, seed=5)
    await engine.load(LoadSpec("xlmr", folder, embedding=True))
    texts = (CAT, "a much longer sentence " * 6, STOCKS)
    vectors = await embed(engine, "xlmr", *texts)
    for text, vector in zip(texts, vectors, strict=True):
        assert float(vector @ reference_embedding(folder, text)) > 1 - 1e-5
    with pytest.raises(InvalidRequestError):  # 66 positions less the 2 before the first: 64
        await engine.generate("xlmr", EmbeddingRequest(inputs=((5,) * 65,)))


async def test_an_encoder_architecture_not_run_here_fails_its_load_by_name(
    engine: Engine, embedding_model: Path, tmp_path: Path
) -> None:
    folder = make_tiny_xlm_roberta(tmp_path / "nomic", embedding_model)
    config = json.loads((folder / "config.json").read_text())
    config |= {"architectures": ["NomicBertModel"], "model_type": "nomic_bert"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError):
        await engine.load(LoadSpec("nomic", folder, embedding=True))
    await engine.load(LoadSpec("minilm", embedding_model, embedding=True))  # still serving
    assert (await embed(engine, "minilm", CAT)).shape == (1, 384)


def shelved_tokenizer(engine: Engine, key: str) -> object:
    """Engine thread: the tokenizer the loaded embedding model `key` holds."""
    return engine._embedders._models[key].tokenizer  # which instance is the point here


async def test_embedding_models_take_their_tokenizers_from_the_shelf(
    engine: Engine, embedding_model: Path
) -> None:
    """tokenizers 0.23 keeps ~0.9 KB from every instance that encodes: reloads of the same
    files, and a second id on them, use the one tokenizer, as chat models do
    (docs/UPSTREAM-tokenizers-instance-leak.md)."""
    await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
    await embed(engine, "minilm", CAT)
    first = await engine.call(lambda: shelved_tokenizer(engine, "minilm"))
    for _ in range(2):
        await engine.unload("minilm")
        assert await engine.call(lambda: len(engine._loads.tokenizers)) == 1  # kept, released
        await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
        assert await engine.call(lambda: shelved_tokenizer(engine, "minilm")) is first
    await engine.load(LoadSpec("other-id", embedding_model, embedding=True))
    assert await engine.call(lambda: shelved_tokenizer(engine, "other-id")) is first
    await engine.unload("minilm")
    await engine.unload("other-id")
    assert await engine.call(lambda: len(engine._loads.tokenizers)) == 1


@contextlib.asynccontextmanager
async def chat_tokens(engine: Engine, model: str) -> AsyncIterator[Callable[[], int]]:
    """An endless greedy chat stream on `model`, consumed beside the caller: yields a function
    giving how many tokens it has streamed so far (once it has begun); cancelled at the end."""
    endless = SamplingParams(temperature=0, logit_bias={2: -100})
    stream = await engine.generate(
        model, GenerationRequest(prompt="Hi", max_tokens=4000, sampling=endless)
    )
    tokens = 0
    streaming = asyncio.Event()

    async def consume() -> None:
        nonlocal tokens
        async for event in stream:
            if isinstance(event, Chunk):
                tokens += 1
                streaming.set()

    consumer = asyncio.create_task(consume())
    try:
        await streaming.wait()
        yield lambda: tokens
    finally:
        stream.cancel()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


async def test_a_chat_stream_keeps_flowing_while_an_embedding_model_loads(
    embedding_model: Path, tmp_path: Path
) -> None:
    """An embedding model's weights are read a slice per engine step, as a chat model's are:
    the chat stream gets a token between slices (one array per slice here)."""
    engine = Engine(prompt_cache_bytes=0, load_slice_bytes=1)
    try:
        await engine.load(
            LoadSpec("chat", make_tiny_model(tmp_path / "chat", seed=1, context=8192))
        )
        async with chat_tokens(engine, "chat") as count:
            before = count()
            await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
            during = count() - before
        # MiniLM has 101 weight arrays: about one chat token per array read.
        assert during >= 50, f"{during} tokens while the embedding model loaded"
        assert (await embed(engine, "minilm", CAT)).shape == (1, 384)
    finally:
        engine.close()


def test_batches_are_sized_by_time_while_chat_streams_decode() -> None:
    """Batches hold what takes `ALONE_BATCH_SECONDS` at the measured pace, or
    `SHARED_BATCH_SECONDS` beside decoding chat streams (a small probe first), within
    `BATCH_TOKENS`, at least one input."""
    from mlxrouter.engine.embedding import (
        ALONE_BATCH_SECONDS,
        BATCH_TOKENS,
        PROBE_TOKENS,
        SHARED_BATCH_SECONDS,
        batch_tokens,
    )

    assert batch_tokens(None, sharing=False) == batch_tokens(None, sharing=True) == PROBE_TOKENS
    assert batch_tokens(1e-7, sharing=False) == BATCH_TOKENS  # a fast device: the usual bound
    assert batch_tokens(1e-7, sharing=True) == BATCH_TOKENS
    assert batch_tokens(ALONE_BATCH_SECONDS / 100, sharing=False) == 100
    assert batch_tokens(SHARED_BATCH_SECONDS / 100, sharing=True) == 100
    assert batch_tokens(10.0, sharing=True) == batch_tokens(10.0, sharing=False) == 1


async def test_a_chat_stream_keeps_flowing_through_an_indexing_job(
    engine: Engine, embedding_model: Path, tmp_path: Path
) -> None:
    """A job queued while a chat stream decodes runs in batches sized by time, so the stream
    gets tokens between them instead of waiting for the whole job (on this CPU, one
    `BATCH_TOKENS` batch would hold every text here)."""
    await engine.load(LoadSpec("chat", make_tiny_model(tmp_path / "chat", seed=1, context=8192)))
    await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
    await embed(engine, "minilm", CAT)  # measured alone: a full-size batch's pace
    async with chat_tokens(engine, "chat") as count:
        texts = [f"document {i} " + "word " * (i % 5) for i in range(16)]
        before = count()
        vectors = await embed(engine, "minilm", *texts)
        during = count() - before
    assert vectors.shape == (16, 384)
    assert during >= 8, f"{during} chat tokens while 16 texts were embedded"
