"""Ollama's API under `/api/`: discovery (`version`, `tags`, `show`, `ps`) for the IDE plugins
that find models this way (Copilot BYOK, JetBrains, Open WebUI), and `chat` / `generate`
through the same `CompletionSession` as every surface, streamed as NDJSON by default. Errors
are Ollama's `{"error": "..."}` (api/envelopes.py, chosen by the path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.response import Stream

from ...config import ModelSettings
from ...daemon import Daemon
from ...engine import GenerationRequest
from ..convert import keep_alive as parse_keep_alive
from ..envelopes import OllamaError
from ..session import CompletionSession, SessionStream
from . import answers, convert
from .schemas import (
    ChatReply,
    ChatRequest,
    GenerateReply,
    GenerateRequest,
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
    await session.open(build)
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


@post(["/api/embed", "/api/embeddings"], status_code=501, include_in_schema=False)
async def embed() -> Response[OllamaError]:
    """Embeddings are not served yet; a clear answer beats a 404."""
    message = "Embeddings are not supported by mlxrouter yet"
    return Response(OllamaError(error=message), status_code=501, media_type=MediaType.JSON)


ROUTES = [version, tags, show, running, chat, generate, embed]
