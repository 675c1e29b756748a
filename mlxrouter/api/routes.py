"""Route handlers: OpenAI chat and text completions, models, health.

Handlers resolve the model, lease it from the pool for the request's whole life (streams
included), hand the request to the engine and translate its events. A client that goes away
cancels its generation at the next token step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from litestar import MediaType, Request, Response, get, head, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Redirect, Stream
from litestar.types import AnyCallable

from .. import __version__
from ..config import ModelSettings
from ..daemon import Daemon
from ..engine import GenerationRequest
from ..images import ImageRef
from ..metrics import CONTENT_TYPE
from ..status import ErrorResponse, Health, LoadAnswer, ModelDetail, PoolStatus, UnloadAnswer
from . import answers, convert
from .responses import ChatCompletion, Completion, ModelList
from .schemas import (
    AdminLoadRequest,
    AdminModelRequest,
    ChatCompletionRequest,
    CompletionRequest,
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


def _completion_route(paths: list[str], answer: type) -> Callable[[AnyCallable], HTTPRouteHandler]:
    """`POST` of one OpenAI completion kind: its paths, and its answer and errors for OpenAPI."""
    described = ResponseSpec(answer, description="The answer (or SSE chunks when streaming)")
    errors = _errors(400, 401, 403, 404, 409, 413, 500, 503, 507)
    return post(paths, status_code=200, responses={200: described, **errors})


@_completion_route(["/v1/chat/completions", "/chat/completions"], ChatCompletion)
async def chat_completions(
    request: Request[Any, Any, Any], state: State, data: JSONBody[ChatCompletionRequest]
) -> Response[Any] | Stream:
    return await _complete(request, _daemon(state), data)


@_completion_route(["/v1/completions", "/completions"], Completion)
async def completions(
    request: Request[Any, Any, Any], state: State, data: JSONBody[CompletionRequest]
) -> Response[Any] | Stream:
    return await _complete(request, _daemon(state), data)


async def _complete(
    request: Request[Any, Any, Any], daemon: Daemon, body: ChatCompletionRequest | CompletionRequest
) -> Response[ChatCompletion | Completion] | Stream:
    limit = daemon.config.default_max_tokens
    kind: Literal["chat", "text"]
    build: Callable[[ModelSettings], list[GenerationRequest]]
    images: list[ImageRef] = []
    if isinstance(body, ChatCompletionRequest):
        kind, logprobs = "chat", bool(body.logprobs)
        images = convert.image_refs(body.messages)

        def build(settings: ModelSettings) -> list[GenerationRequest]:
            return [convert.chat_request(body, settings, default_max_tokens=limit)]
    else:
        kind, logprobs = "text", body.logprobs is not None

        def build(settings: ModelSettings) -> list[GenerationRequest]:
            return convert.completion_requests(body, settings, default_max_tokens=limit)

    session = CompletionSession(
        daemon,
        kind,
        model=body.model,
        adapters=body.adapters,
        keep_alive=convert.keep_alive(body.keep_alive),
    )
    await session.open(build, images)
    meta = answers.ResponseMeta(kind=kind, model=session.model, logprobs=logprobs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = answers.sse_answer(session, meta, include_usage=include_usage)
        return SessionStream(session, stream, media_type="text/event-stream")
    return Response(answers.full_response(meta, await session.answers(request)))


# ---- models and health --------------------------------------------------------------------


class ModelsAnswer:
    """IDE plugins poll `/v1/models`; its answer only changes with the registry snapshot or
    the loaded set, so it is encoded once for each pair."""

    def __init__(self) -> None:
        self._key: tuple[object, frozenset[str]] | None = None
        self._body = b""

    def body(self, daemon: Daemon) -> bytes:
        key = (daemon.registry, daemon.loaded_ids())
        if self._key is None or self._key[0] is not key[0] or self._key[1] != key[1]:
            self._body = msgspec.json.encode(ModelList(data=daemon.model_cards()))
            self._key = key
        return self._body


@get(
    ["/v1/models", "/models"],
    responses={200: ResponseSpec(ModelList, description="Every id and alias"), **_errors(401)},
)
async def list_models(state: State) -> Response[bytes]:
    answer: ModelsAnswer = state.models_answer
    return Response(answer.body(_daemon(state)), media_type=MediaType.JSON)


@get(
    ["/v1/models/{model_id:path}", "/models/{model_id:path}"],
    responses={200: ResponseSpec(ModelDetail, description="One model"), **_errors(401, 404)},
)
async def get_model(state: State, model_id: FromPath[str]) -> ModelDetail:
    return _daemon(state).model_detail(model_id.lstrip("/"))


class ServerCard(msgspec.Struct, kw_only=True):
    name: str = "mlxrouter"
    version: str


@get("/", include_in_schema=False, opt={"exclude_from_csrf": True})
async def root(request: Request[Any, Any, Any], state: State) -> ServerCard | Redirect:
    """What answers here (agent CLIs probe `/` before anything else); a browser, which asks
    for HTML, goes to the dashboard."""
    wants_html = "text/html" in request.headers.get("accept", "")
    if wants_html and _daemon(state).config.ui_config.enabled:
        return Redirect("/ui", status_code=302)
    return ServerCard(version=__version__)


@head("/", include_in_schema=False, opt={"exclude_from_csrf": True})
async def root_head() -> None:
    return None


@get("/metrics", media_type=CONTENT_TYPE)
async def metrics(state: State) -> bytes:
    """Prometheus text format."""
    return _daemon(state).metrics.render()


@get("/health", responses={200: ResponseSpec(Health, description="ok or degraded")})
async def health(state: State) -> Response[Health]:
    answer = _daemon(state).health()
    return Response(answer, status_code=200 if answer.ok else 503)


# ---- admin ----------------------------------------------------------------------------------


@get("/admin/pool")
async def admin_pool(state: State) -> PoolStatus:
    return _daemon(state).pool_status()


@post("/admin/load", status_code=200)
async def admin_load(state: State, data: JSONBody[AdminLoadRequest]) -> LoadAnswer:
    daemon = _daemon(state)
    target = await daemon.load(data.model, data.adapter, pin=data.pin)
    return LoadAnswer(loaded=target.key, pool=daemon.pool_status())


@post("/admin/unload", status_code=200)
async def admin_unload(state: State, data: JSONBody[AdminModelRequest]) -> UnloadAnswer:
    daemon = _daemon(state)
    unloaded = await daemon.unload(data.model, data.adapter)
    return UnloadAnswer(unloaded=unloaded, pool=daemon.pool_status())


ROUTES = [
    root,
    root_head,
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
