"""Embedding models on the engine thread: building, tokenising, batching, pooling.

They load like chat models (`loading.PendingLoads`: weights read a slice per engine step,
the tokenizer on the side thread and shared through the `TokenizerShelf`); `lazy_embedder`
builds the model and `Embedders.register` takes it in once its weights are read.

An encoder (BERT, (XLM-)RoBERTa: `engine.bert`) or a decoder embedder (Qwen3-Embedding: any
mlx_lm model, its final hidden states) gives one hidden state per token; the model's
sentence-transformers files say how they become one vector: `1_Pooling/config.json` (mean,
CLS or last token) and `modules.json` (a `Normalize` module). A folder without them pools by
the mean (encoders) or the last token (decoders) and normalises, the way both kinds are
published.

The inputs of every request to one model wait in one queue. Each engine turn runs one batch
per busy model: the queue's inputs sorted by length, shortest first, padded on the right, as
many as fit `BATCH_TOKENS` padded tokens (at least one) and take at most about
`ALONE_BATCH_SECONDS` at the model's measured pace, or `SHARED_BATCH_SECONDS` while chat
streams decode (`batch_tokens`: on a CPU one MiniLM batch of 8,192 tokens takes minutes). So
an indexing job of thousands of texts delays the chat streams of the same turn by one short
batch, never by the whole job, and a chat request arriving during a job waits for one. Padding
cannot change a vector: keys at padded positions are masked out of an encoder's attention, a
decoder's causal attention never looks right, and pooling reads only the real tokens.
Engine thread only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import numpy as np

from ..discovery import unsupported_encoder
from ..errors import EngineError, InvalidRequestError
from .bert import is_encoder, lazy_encoder, position_offset
from .bridge import GenerationStream
from .loading import lazy_model
from .types import Embedded, EmbeddingRequest, Finished, LoadSpec, ModelInfo, Started

log = logging.getLogger(__name__)

__all__ = ["BATCH_TOKENS", "Embedders", "batch_tokens", "lazy_embedder", "pooling_of"]

#: padded tokens (inputs x longest input) one batch may hold: bounds a batch's time and memory
BATCH_TOKENS = 8192

#: while chat streams decode, a batch is sized to take about this long (by the model's measured
#: seconds per padded token), so a slow device (a CPU) still gives them a token every so often
SHARED_BATCH_SECONDS = 0.05

#: the most a batch may take otherwise: a chat request arriving meanwhile waits for it (a CPU
#: embeds as fast in small batches as in large ones; a GPU fits `BATCH_TOKENS` well within it)
ALONE_BATCH_SECONDS = 0.25

#: a model's first batch, before its pace is measured
PROBE_TOKENS = 64

Pooling = Literal["mean", "cls", "last"]


def pooling_of(folder: Path, *, decoder: bool) -> tuple[Pooling, bool]:
    """(pooling, normalise) from the sentence-transformers files, else the kind's usual."""
    pooling: Pooling = "last" if decoder else "mean"
    normalize = True
    try:
        config = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if config.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif config.get("pooling_mode_lasttoken"):
            pooling = "last"
        elif config.get("pooling_mode_mean_tokens"):
            pooling = "mean"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        modules = json.loads((folder / "modules.json").read_text())
        normalize = any("Normalize" in str(m.get("type", "")) for m in modules)
    except (OSError, ValueError, AttributeError):
        pass
    return pooling, normalize


@dataclass(slots=True)
class _Job:
    """One request: its vectors fill in as their batches run."""

    stream: GenerationStream
    vectors: np.ndarray
    left: int
    prompt_tokens: int
    started: float
    dimensions: int | None = None


@dataclass(slots=True)
class _Item:
    job: _Job
    index: int
    tokens: list[int]


@dataclass(slots=True)
class _Embedder:
    key: str
    forward: Any  # (tokens, mask) -> hidden states (batch, length, width)
    tokenizer: Any  # mlx_lm's wrapper, as the shelf keeps it
    encode: Any  # the Hugging Face tokenizer in it
    pooling: Pooling
    normalize: bool
    max_tokens: int
    vocab_size: int
    info: ModelInfo | None = None
    queue: list[_Item] = field(default_factory=list)
    #: seconds per padded token of its batches so far (a moving average); None: none run yet
    token_seconds: float | None = None


class Embedders:
    """The loaded embedding models and their queues (engine thread only)."""

    def __init__(self) -> None:
        self._models: dict[str, _Embedder] = {}

    @property
    def busy(self) -> bool:
        return any(m.queue for m in self._models.values())

    def __contains__(self, key: str) -> bool:
        return key in self._models

    def info(self, key: str) -> ModelInfo | None:
        embedder = self._models.get(key)
        return None if embedder is None else embedder.info

    def register(
        self, spec: LoadSpec, model: Any, tokenizer: Any, nbytes: int, started: float
    ) -> ModelInfo:
        """A model whose weights `PendingLoads` has read (built by `lazy_embedder`), with its
        tokenizer (mlx_lm's wrapper, shared through the engine's `TokenizerShelf`)."""
        folder = spec.model_path
        config = json.loads((folder / "config.json").read_text())
        decoder = not is_encoder(config)
        if decoder:
            inner = model.model  # the final hidden states, before the LM head

            def forward(tokens: mx.array, mask: mx.array) -> mx.array:
                hidden: mx.array = inner(tokens)  # causal: right padding never reaches a real token
                return hidden

        else:
            forward = model
        pooling, normalize = pooling_of(folder, decoder=decoder)
        encode = tokenizer._tokenizer  # the Hugging Face tokenizer inside mlx_lm's wrapper
        embedder = _Embedder(
            key=spec.key,
            forward=forward,
            tokenizer=tokenizer,
            encode=encode,
            pooling=pooling,
            normalize=normalize,
            max_tokens=_max_tokens(folder, config),
            vocab_size=int(config.get("vocab_size") or len(encode)),
        )
        embedder.info = ModelInfo(
            nbytes=nbytes,
            context_length=embedder.max_tokens,
            vocab_size=embedder.vocab_size,
            has_chat_template=False,
            load_seconds=time.perf_counter() - started,
        )
        self._models[spec.key] = embedder
        return embedder.info

    def unload(self, key: str, error: Exception) -> Any:
        """Drop `key`, ending its queued requests with `error`; returns its tokenizer (for the
        shelf) or None when it was not loaded."""
        embedder = self._models.pop(key, None)
        if embedder is None:
            return None
        for job in {id(item.job): item.job for item in embedder.queue}.values():
            job.stream.emit(error)
        return embedder.tokenizer

    def fail_all(self, error: Exception) -> None:
        for key in list(self._models):
            self.unload(key, error)

    def submit(self, key: str, request: EmbeddingRequest, stream: GenerationStream) -> None:
        """Tokenise and check every input (raising on the first bad one), then queue them."""
        embedder = self._models.get(key)
        if embedder is None:
            raise EngineError(f"The model `{key}` is not loaded")
        inputs = [_tokens(embedder, request, i, item) for i, item in enumerate(request.inputs)]
        count = sum(len(tokens) for tokens in inputs)
        job = _Job(
            stream,
            np.zeros((len(inputs), 0), np.float32),
            len(inputs),
            count,
            time.perf_counter(),
            request.dimensions,
        )
        embedder.queue.extend(_Item(job, i, tokens) for i, tokens in enumerate(inputs))
        stream.emit(Started(prompt_tokens=count))

    def step(self, mx_stream: Any, *, sharing: bool = False) -> None:
        """One batch for every model with inputs waiting, sized by `batch_tokens` (shorter when
        `sharing`: chat streams decode in the same turns); a failure fails that model's
        jobs."""
        for embedder in list(self._models.values()):
            if not embedder.queue:
                continue
            try:
                _step(embedder, mx_stream, batch_tokens(embedder.token_seconds, sharing=sharing))
            except Exception:
                log.exception(
                    "embedding on %s failed; its requests end with an error", embedder.key
                )
                failed = EngineError("Embedding failed on this model")
                for job in {id(item.job): item.job for item in embedder.queue}.values():
                    job.stream.emit(failed)
                embedder.queue.clear()


def lazy_embedder(spec: LoadSpec) -> Any:
    """`PendingLoads`' build for an embedding model: our encoder for BERT and (XLM-)RoBERTa,
    mlx_lm's model for a decoder embedder; weights mapped, not yet read. An encoder
    architecture we do not run fails here, by name, rather than as a decoder."""
    config = json.loads((spec.model_path / "config.json").read_text())
    unsupported = unsupported_encoder(config)
    if unsupported is not None:
        raise ValueError(f"the encoder architecture {unsupported} is not supported")
    if is_encoder(config):
        return lazy_encoder(spec.model_path, config)
    return lazy_model(spec)


def _max_tokens(folder: Path, config: dict[str, Any]) -> int:
    """sentence-transformers' `max_seq_length`, within the position table (less the ids an
    (XLM-)RoBERTa table spends before its first position)."""
    positions = int(config.get("max_position_embeddings") or 512)
    if is_encoder(config):
        positions -= position_offset(config)
    try:
        limit = int(
            json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return positions
    return min(limit, positions)


def _tokens(
    embedder: _Embedder, request: EmbeddingRequest, index: int, item: str | tuple[int, ...]
) -> list[int]:
    param = f"{request.param}[{index}]" if len(request.inputs) > 1 else request.param
    limit = embedder.max_tokens
    if isinstance(item, str):
        cut = {"truncation": True, "max_length": limit} if request.truncate else {}
        tokens = list(embedder.encode(item, **cut)["input_ids"])
    else:
        tokens = list(item)
        bad = next((t for t in tokens if not 0 <= t < embedder.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"Token id {bad} in {param} is outside the vocabulary (0 to "
                f"{embedder.vocab_size - 1})",
                param=param,
            )
        if request.truncate:
            tokens = tokens[:limit]
    if len(tokens) > limit:
        raise InvalidRequestError(
            f"{param} has {len(tokens)} tokens; `{embedder.key}` takes at most {limit}",
            param=param,
        )
    return tokens


def batch_tokens(token_seconds: float | None, *, sharing: bool) -> int:
    """Padded tokens the next batch may hold: as many as take about `SHARED_BATCH_SECONDS`
    while chat streams decode (`sharing`), else `ALONE_BATCH_SECONDS`, at the measured seconds
    per padded token, within `BATCH_TOKENS` (a GPU's MiniLM fits `BATCH_TOKENS` in either; a
    CPU a text or two); `PROBE_TOKENS` before anything is measured."""
    if not token_seconds:
        return PROBE_TOKENS
    seconds = SHARED_BATCH_SECONDS if sharing else ALONE_BATCH_SECONDS
    return max(1, min(BATCH_TOKENS, int(seconds / token_seconds)))


def _step(embedder: _Embedder, mx_stream: Any, limit: int) -> None:
    queue = embedder.queue
    queue.sort(key=lambda item: len(item.tokens))
    queue[:] = [item for item in queue if not item.job.stream.cancelled]
    if not queue:
        return
    taken = 1
    while taken < len(queue) and (taken + 1) * len(queue[taken].tokens) <= limit:
        taken += 1
    batch, embedder.queue = queue[:taken], queue[taken:]
    started = time.perf_counter()
    vectors = _embed(embedder, [item.tokens for item in batch], mx_stream)
    # Padded tokens: what the batch computed (its rows times its longest, the last one).
    measured = (time.perf_counter() - started) / (taken * len(batch[-1].tokens))
    previous = embedder.token_seconds
    embedder.token_seconds = measured if previous is None else 0.5 * (previous + measured)
    for item, vector in zip(batch, vectors, strict=True):
        job = item.job
        if job.vectors.shape[1] == 0:
            job.vectors = np.zeros((job.vectors.shape[0], vector.shape[0]), np.float32)
        job.vectors[item.index] = vector
        job.left -= 1
        if job.left == 0:
            seconds = time.perf_counter() - job.started
            vectors = _shortened(job.vectors, job.dimensions)
            job.stream.emit(Embedded(vectors=vectors, prompt_tokens=job.prompt_tokens))
            job.stream.emit(
                Finished(
                    finish_reason="stop",
                    prompt_tokens=job.prompt_tokens,
                    completion_tokens=0,
                    prompt_seconds=seconds,
                )
            )


def _shortened(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """A Matryoshka model's vectors cut to their first `dimensions` and normalised again (the
    full vector's unit norm does not carry over to its prefix)."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    shortened: np.ndarray = (cut / np.maximum(norms, 1e-12)).astype(np.float32)
    return shortened


def _embed(embedder: _Embedder, inputs: list[list[int]], mx_stream: Any) -> np.ndarray:
    """Pooled (and normalised) float32 vectors of one right-padded batch."""
    width = max(len(tokens) for tokens in inputs)
    ids = np.zeros((len(inputs), width), np.int32)
    mask = np.zeros((len(inputs), width), np.int32)
    for row, tokens in enumerate(inputs):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    with mx.stream(mx_stream):
        hidden = embedder.forward(mx.array(ids), mx.array(mask)).astype(mx.float32)
        weights = mx.array(mask, dtype=mx.float32)[..., None]
        if embedder.pooling == "cls":
            pooled = hidden[:, 0]
        elif embedder.pooling == "last":
            last = mx.array([len(tokens) - 1 for tokens in inputs])
            pooled = hidden[mx.arange(len(inputs)), last]
        else:
            pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        if embedder.normalize:
            norm = mx.linalg.norm(pooled, axis=-1, keepdims=True)
            pooled = pooled / mx.maximum(norm, 1e-12)
        mx.eval(pooled)
    return np.array(pooled, dtype=np.float32)
