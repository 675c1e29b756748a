"""Embedding models on the engine thread: loading, tokenising, batching, pooling.

An encoder (BERT: `engine.bert`) or a decoder embedder (Qwen3-Embedding: any mlx_lm model, its
final hidden states) gives one hidden state per token; the model's sentence-transformers files
say how they become one vector: `1_Pooling/config.json` (mean, CLS or last token) and
`modules.json` (a `Normalize` module). A folder without them pools by the mean (encoders) or
the last token (decoders) and normalises, the way both kinds are published.

The inputs of every request to one model wait in one queue. Each engine turn runs one batch
per busy model: the queue's inputs sorted by length, shortest first, padded on the right, as
many as fit `BATCH_TOKENS` padded tokens (at least one). So an indexing job of thousands of
texts delays the chat streams of the same turn by one batch, never by the whole job. Padding
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

from ..errors import EngineError, InvalidRequestError
from .bert import is_bert, load_bert
from .bridge import GenerationStream
from .loading import free_memory, load_failed, settle_random_state
from .types import Embedded, EmbeddingRequest, Finished, LoadSpec, ModelInfo, Started

log = logging.getLogger(__name__)

__all__ = ["BATCH_TOKENS", "Embedders", "pooling_of"]

#: padded tokens (inputs x longest input) one batch may hold: bounds a batch's time and memory
BATCH_TOKENS = 8192

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
    tokenizer: Any
    pooling: Pooling
    normalize: bool
    max_tokens: int
    vocab_size: int
    info: ModelInfo | None = None
    queue: list[_Item] = field(default_factory=list)


class Embedders:
    """The loaded embedding models and their queues (engine thread only)."""

    def __init__(self) -> None:
        self._models: dict[str, _Embedder] = {}

    @property
    def busy(self) -> bool:
        return any(m.queue for m in self._models.values())

    def __contains__(self, key: str) -> bool:
        return key in self._models

    def load(self, spec: LoadSpec) -> ModelInfo:
        """Build and read the model at once (embedding models are small: MiniLM is 90 MB);
        a model already loaded is shared."""
        loaded = self._models.get(spec.key)
        if loaded is not None and loaded.info is not None:
            return loaded.info
        started = time.perf_counter()
        before = mx.get_active_memory()
        try:
            embedder = _build(spec)
        except Exception as exc:  # noqa: BLE001 - any load failure is this model's, not ours
            free_memory()
            raise load_failed(spec, exc) from None
        self._models[spec.key] = embedder
        embedder.info = ModelInfo(
            nbytes=max(int(mx.get_active_memory() - before), 0),
            context_length=embedder.max_tokens,
            vocab_size=embedder.vocab_size,
            has_chat_template=False,
            load_seconds=time.perf_counter() - started,
        )
        return embedder.info

    def unload(self, key: str, error: Exception) -> None:
        embedder = self._models.pop(key, None)
        if embedder is not None:
            for job in {id(item.job): item.job for item in embedder.queue}.values():
                job.stream.emit(error)

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

    def step(self, mx_stream: Any) -> None:
        """One batch for every model with inputs waiting; a failure fails that model's jobs."""
        for embedder in list(self._models.values()):
            if not embedder.queue:
                continue
            try:
                _step(embedder, mx_stream)
            except Exception:
                log.exception(
                    "embedding on %s failed; its requests end with an error", embedder.key
                )
                failed = EngineError("Embedding failed on this model")
                for job in {id(item.job): item.job for item in embedder.queue}.values():
                    job.stream.emit(failed)
                embedder.queue.clear()


def _build(spec: LoadSpec) -> _Embedder:
    from transformers import AutoTokenizer

    folder = spec.model_path
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code)
    decoder = not is_bert(config)
    if decoder:
        from mlx_lm.utils import load_model

        model, _ = load_model(folder, trust_remote_code=spec.trust_remote_code)
        inner = model.model  # the final hidden states, before the LM head

        def forward(tokens: mx.array, mask: mx.array) -> mx.array:
            hidden: mx.array = inner(tokens)  # causal: right padding never reaches a real token
            return hidden

    else:
        encoder = load_bert(folder, config)
        forward = encoder
    settle_random_state()
    pooling, normalize = pooling_of(folder, decoder=decoder)
    limit = _max_tokens(folder, config)
    return _Embedder(
        key=spec.key,
        forward=forward,
        tokenizer=tokenizer,
        pooling=pooling,
        normalize=normalize,
        max_tokens=limit,
        vocab_size=int(config.get("vocab_size") or len(tokenizer)),
    )


def _max_tokens(folder: Path, config: dict[str, Any]) -> int:
    """sentence-transformers' `max_seq_length`, within the position table."""
    positions = int(config.get("max_position_embeddings") or 512)
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
        tokens = list(embedder.tokenizer(item, **cut)["input_ids"])
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


def _step(embedder: _Embedder, mx_stream: Any) -> None:
    queue = embedder.queue
    queue.sort(key=lambda item: len(item.tokens))
    queue[:] = [item for item in queue if not item.job.stream.cancelled]
    if not queue:
        return
    taken = 1
    while taken < len(queue) and (taken + 1) * len(queue[taken].tokens) <= BATCH_TOKENS:
        taken += 1
    batch, embedder.queue = queue[:taken], queue[taken:]
    vectors = _embed(embedder, [item.tokens for item in batch], mx_stream)
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
