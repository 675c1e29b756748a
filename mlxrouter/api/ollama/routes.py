"""Ollama's API under `/api/`: discovery (`version`, `tags`, `show`, `ps`) for the IDE plugins
that find models this way (Copilot BYOK, JetBrains, Open WebUI), and `chat` / `generate` /
`embed` / `embeddings` through the same `CompletionSession` as every surface, the generations
streamed as NDJSON by default. Errors
are Ollama's `{"error": "..."}` (api/envelopes.py, chosen by the path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.response import Stream

from ...config import ModelSettings
from ...daemon import Daemon
from ...engine import EmbeddingRequest, GenerationRequest
from ..convert import keep_alive as parse_keep_alive
from ..embeddings import check_dimensions, embedding_request
from ..session import CompletionSession, SessionStream
from . import answers, convert
from .schemas import (
    ChatReply,
    ChatRequest,
    EmbedAnswer,
    EmbedRequest,
    GenerateReply,
    GenerateRequest,
    LegacyEmbeddingsAnswer,
    LegacyEmbeddingsRequest,
    RunningAnswer,
    ShowAnswer,
    ShowRequest,
    TagsAnswer,
    VersionAnswer,
)

#: The Ollama version this API answers as. Clients gate features on it: Copilot's BYOK
#: provider refuses servers older than 0.6.4, and clients send `think` only to 0.9 or newer;
#: 0.12.0 passes every such check without claiming anything newer.
OLLAMA_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"


def _daemon(state: State) -> Daemon:
    daemon: Daemon = state.daemon
    return daemon


@get("/api/version")
async def version() -> VersionAnswer:
    return VersionAnswer(version=OLLAMA_VERSION)


@get("/api/tags")
async def tags(state: State) -> TagsAnswer:
    """Every id and alias the daemon serves, as Ollama's local models."""
    return answers.tags(_daemon(state).model_cards())


@post("/api/show", status_code=200)
async def show(state: State, data: JSONBody[ShowRequest]) -> ShowAnswer:
    name = data.model or data.name or ""
    return answers.show(_daemon(state).model_detail(convert.model_id(name)))


@get("/api/ps")
async def running(state: State) -> RunningAnswer:
    daemon = _daemon(state)
    return answers.running(daemon.pool_status(), daemon.model_cards())


@post("/api/chat", status_code=200)
async def chat(
    request: Request[Any, Any, Any], state: State, data: JSONBody[ChatRequest]
) -> Response[ChatReply | GenerateReply] | Stream:
    return await _complete(request, _daemon(state), data)


@post("/api/generate", status_code=200)
async def generate(
    request: Request[Any, Any, Any], state: State, data: JSONBody[GenerateRequest]
) -> Response[ChatReply | GenerateReply] | Stream:
    return await _complete(request, _daemon(state), data)


async def _complete(
    request: Request[Any, Any, Any], daemon: Daemon, body: ChatRequest | GenerateRequest
) -> Response[ChatReply | GenerateReply] | Stream:
    started = time.perf_counter()
    limit = daemon.config.default_max_tokens
    kind: Literal["chat", "generate"]
    build: Callable[[ModelSettings], list[GenerationRequest]]
    if isinstance(body, ChatRequest):
        kind = "chat"

        def build(settings: ModelSettings) -> list[GenerationRequest]:
            return convert.chat_request(body, settings, default_max_tokens=limit)
    else:
        kind = "generate"

        def build(settings: ModelSettings) -> list[GenerationRequest]:
            return convert.generate_request(body, settings, default_max_tokens=limit)

    keep_alive = parse_keep_alive(body.keep_alive)
    session = CompletionSession(
        daemon,
        f"ollama-{kind}",
        model=convert.model_id(body.model),
        adapters=None,
        keep_alive=keep_alive,
    )
    await session.open(build, convert.image_refs(body))
    replies = answers.Replies(
        kind=kind,
        model=body.model,
        started=started,
        leased=session.record.leased_at,
    )
    if not session.choices:  # nothing to generate: a load (or unload) request
        await session.answers(request)
        unloading = keep_alive is not None and float(keep_alive) == 0
        return Response(replies.loaded(unloading))
    if body.stream:
        return SessionStream(session, answers.ndjson_answer(session, replies), media_type=NDJSON)
    return Response(replies.whole((await session.answers(request))[0]))


@post("/api/embed", status_code=200)
async def embed(
    request: Request[Any, Any, Any], state: State, data: JSONBody[EmbedRequest]
) -> EmbedAnswer:
    """Ollama's embeddings: `input` a string or a list of them, truncated by default."""
    started = time.perf_counter()
    daemon = _daemon(state)
    model = convert.model_id(data.model)
    job = embedding_request(
        data.input, limit=daemon.config.max_embedding_inputs, truncate=data.truncate
    )
    job = replace(job, dimensions=check_dimensions(daemon, model, data.dimensions))
    vectors, session = await _embed(request, daemon, model, data.keep_alive, job)
    end = time.perf_counter()
    leased = session.record.leased_at or end
    return EmbedAnswer(
        model=data.model,
        embeddings=vectors.tolist(),
        total_duration=int((end - started) * 1e9),
        load_duration=int((leased - started) * 1e9),
        prompt_eval_count=session.started[0].prompt_tokens if session.started else 0,
    )


@post("/api/embeddings", status_code=200)
async def embeddings(
    request: Request[Any, Any, Any], state: State, data: JSONBody[LegacyEmbeddingsRequest]
) -> LegacyEmbeddingsAnswer:
    """The older form: one `prompt`, one `embedding` (truncated, as Ollama does)."""
    daemon = _daemon(state)
    job = embedding_request(data.prompt, limit=1, truncate=True, param="prompt")
    vectors, _ = await _embed(request, daemon, convert.model_id(data.model), data.keep_alive, job)
    return LegacyEmbeddingsAnswer(embedding=vectors[0].tolist())


async def _embed(
    request: Request[Any, Any, Any],
    daemon: Daemon,
    model: str,
    keep_alive: str | float | None,
    job: EmbeddingRequest,
) -> tuple[np.ndarray, CompletionSession]:
    session = CompletionSession(
        daemon,
        "ollama-embed",
        model=model,
        adapters=None,
        keep_alive=parse_keep_alive(keep_alive),
        serves="embedding",
    )
    await session.open(lambda _: [job])
    answer = await session.embeddings(request)
    return np.asarray(answer.vectors, dtype=np.float32), session


ROUTES = [version, tags, show, running, chat, generate, embed, embeddings]
