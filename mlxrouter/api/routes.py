"""Route handlers: OpenAI chat and text completions, models, health.

Handlers resolve the model, lease it from the pool for the request's whole life (streams
included), hand the request to the engine and translate its events. A client that goes away
cancels its generation at the next token step.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from ..daemon import Daemon
from ..engine import GenerationRequest
from ..metrics import CONTENT_TYPE
from ..registry import RegistryEntry
from . import convert
from .schemas import (
    AdminModelRequest,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
)
from .session import CompletionSession, SessionStream

log = logging.getLogger(__name__)


def _daemon(state: State) -> Daemon:
    daemon: Daemon = state.daemon
    return daemon


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(ErrorResponse, description="OpenAI error", generate_examples=False)
        for status in statuses
    }


COMPLETION_ERRORS = _errors(400, 401, 403, 404, 409, 413, 500, 503, 507)


@post(
    ["/v1/chat/completions", "/chat/completions"],
    status_code=200,
    responses={
        200: ResponseSpec(ChatCompletion, description="The answer (or SSE chunks when streaming)"),
        **COMPLETION_ERRORS,
    },
)
async def chat_completions(
    request: Request[Any, Any, Any], state: State, data: JSONBody[ChatCompletionRequest]
) -> Response[Any] | Stream:
    daemon = _daemon(state)
    generation = convert.chat_request(data, default_max_tokens=daemon.config.default_max_tokens)
    return await _complete(request, daemon, data, [generation], logprobs=bool(data.logprobs))


@post(
    ["/v1/completions", "/completions"],
    status_code=200,
    responses={
        200: ResponseSpec(Completion, description="The answer (or SSE chunks when streaming)"),
        **COMPLETION_ERRORS,
    },
)
async def completions(
    request: Request[Any, Any, Any], state: State, data: JSONBody[CompletionRequest]
) -> Response[Any] | Stream:
    daemon = _daemon(state)
    generations = convert.completion_requests(
        data, default_max_tokens=daemon.config.default_max_tokens
    )
    return await _complete(request, daemon, data, generations, logprobs=data.logprobs is not None)


async def _complete(
    request: Request[Any, Any, Any],
    daemon: Daemon,
    body: ChatCompletionRequest | CompletionRequest,
    generations: list[GenerationRequest],
    *,
    logprobs: bool,
) -> Response[Any] | Stream:
    kind = "chat" if isinstance(body, ChatCompletionRequest) else "text"
    session = CompletionSession(
        daemon,
        kind,
        model=body.model,
        adapters=body.adapters,
        keep_alive=body.keep_alive,
        logprobs=logprobs,
    )
    await session.open(generations)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SessionStream(session, include_usage=include_usage)
    return Response(await session.full(request))


# ---- models and health --------------------------------------------------------------------


def _model_card(daemon: Daemon, model_id: str, entry: RegistryEntry) -> dict[str, Any]:
    found = entry.found
    registry = daemon.registry
    # An adapter answers like its base: its context, capabilities and quantisation are the base's.
    model = (
        registry.entries.get(entry.base or "", entry).found if entry.kind == "adapter" else found
    )
    return {
        "id": model_id,
        "object": "model",
        "created": found.created,
        "owned_by": found.owned_by,
        # --- mlxrouter extensions ---
        "kind": entry.kind,
        "base": entry.base,
        "loaded": daemon.pool.is_loaded(entry.id),
        "context_length": model.context_length,
        "max_model_len": model.context_length,  # the name vLLM-aware pickers read
        "capabilities": list(model.capabilities),
        "quantization_bits": model.quantization_bits,
        "size_bytes": found.size_bytes,
    }


@get(
    ["/v1/models", "/models"],
    responses={200: ResponseSpec(ModelList, description="Every id and alias"), **_errors(401)},
)
async def list_models(state: State) -> Response[bytes]:
    daemon = _daemon(state)
    registry = daemon.registry  # one snapshot for the whole answer
    loaded = frozenset(e.key for e in daemon.pool.entries() if e.loaded)
    # IDE plugins poll this: the answer only changes with the snapshot or the loaded set,
    # so it is built and encoded once for each pair.
    cached = daemon.models_answer
    if cached is None or cached[0] is not registry or cached[1] != loaded:
        cards = [_model_card(daemon, e.id, e) for e in registry]
        cards += [_model_card(daemon, a, registry.resolve(a)) for a in registry.aliases]
        body = msgspec.json.encode({"object": "list", "data": sorted(cards, key=lambda c: c["id"])})
        cached = daemon.models_answer = (registry, loaded, body)
    return Response(cached[2], media_type=MediaType.JSON)


@get(
    ["/v1/models/{model_id:path}", "/models/{model_id:path}"],
    responses={200: ResponseSpec(ModelCard, description="One model"), **_errors(401, 404)},
)
async def get_model(state: State, model_id: FromPath[str]) -> dict[str, Any]:
    daemon = _daemon(state)
    name = model_id.lstrip("/")
    return _model_card(daemon, name, daemon.registry.resolve(name))


@get("/metrics", media_type=CONTENT_TYPE)
async def metrics(state: State) -> bytes:
    """Prometheus text format."""
    return _daemon(state).metrics.render()


@get("/health", responses={200: ResponseSpec(Health, description="ok or degraded")})
async def health(state: State) -> Response[dict[str, Any]]:
    daemon = _daemon(state)
    ok, reasons = daemon.health()
    body = {
        "status": "ok" if ok else "degraded",
        "reasons": reasons,
        "models": len(daemon.registry),
        "loaded": [e.key for e in daemon.pool.entries() if e.loaded],
    }
    return Response(body, status_code=200 if ok else 503)


# ---- admin ----------------------------------------------------------------------------------


@get("/admin/pool")
async def admin_pool(state: State) -> dict[str, Any]:
    return _daemon(state).pool_status()


@post("/admin/load", status_code=200)
async def admin_load(state: State, data: JSONBody[AdminModelRequest]) -> dict[str, Any]:
    daemon = _daemon(state)
    target = await daemon.load(data.model, data.adapter)
    return {"loaded": target.key, "pool": daemon.pool_status()}


@post("/admin/unload", status_code=200)
async def admin_unload(state: State, data: JSONBody[AdminModelRequest]) -> dict[str, Any]:
    daemon = _daemon(state)
    unloaded = await daemon.unload(data.model, data.adapter)
    return {"unloaded": unloaded, "pool": daemon.pool_status()}


ROUTES = [
    chat_completions,
    completions,
    list_models,
    get_model,
    health,
    metrics,
    admin_pool,
    admin_load,
    admin_unload,
]
