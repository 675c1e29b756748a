"""Route handlers: OpenAI chat and text completions, models, health.

Handlers resolve the model, lease it from the pool for the request's whole life (streams
included), hand the request to the engine and translate its events. A client that goes away
cancels its generation at the next token step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from ..daemon import Daemon
from ..engine import Chunk, Finished, GenerationRequest, GenerationStream
from ..errors import EngineError, MlxRouterError
from ..metrics import CONTENT_TYPE
from ..pool import Lease
from ..registry import RegistryEntry
from . import convert
from .errors import status_of
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

log = logging.getLogger("mlxrouter.access")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    return await _complete(request, daemon, data, generation, "chat", logprobs=bool(data.logprobs))


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
    generation = convert.completion_request(
        data, default_max_tokens=daemon.config.default_max_tokens
    )
    return await _complete(
        request, daemon, data, generation, "text", logprobs=data.logprobs is not None
    )


async def _complete(
    request: Request[Any, Any, Any],
    daemon: Daemon,
    body: ChatCompletionRequest | CompletionRequest,
    generation: GenerationRequest,
    kind: str,
    *,
    logprobs: bool,
) -> Response[Any] | Stream:
    record = _RequestRecord(daemon, kind, body.model or "-")
    stack = AsyncExitStack()
    try:
        target = daemon.target(body.model, body.adapters)
        record.model = target.requested
        record.log_prompt(generation)
        keep_alive = convert.keep_alive_seconds(body.keep_alive)
        lease = await stack.enter_async_context(daemon.lease(target, keep_alive=keep_alive))
        record.leased(lease)
        stream = await daemon.generate(lease, generation)
        stack.callback(stream.cancel)
        await stream.next_event()  # Started: the prompt was accepted
    except BaseException as exc:
        await stack.aclose()
        record.done(status_of(exc) if isinstance(exc, MlxRouterError) else 500, None)
        raise
    meta = convert.ResponseMeta(kind=kind, model=target.requested)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse_events(stack, stream, meta, record, logprobs=logprobs, usage=include_usage)
        return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS)
    async with stack:
        chunks, finished = await _collect(request, stream, record)
    record.done(200, finished)
    return Response(convert.full_response(meta, chunks, finished, logprobs=logprobs))


async def _collect(
    request: Request[Any, Any, Any], stream: GenerationStream, record: _RequestRecord
) -> tuple[list[Chunk], Finished]:
    """Gather a whole answer; if the client disconnects meanwhile, stop generating."""
    watcher = asyncio.create_task(_cancel_on_disconnect(request, stream))
    try:
        chunks: list[Chunk] = []
        async for event in stream:
            if isinstance(event, Chunk):
                record.first_token()
                chunks.append(event)
            elif isinstance(event, Finished):
                return chunks, event
        raise EngineError("The generation ended without finishing")
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(request: Request[Any, Any, Any], stream: GenerationStream) -> None:
    with contextlib.suppress(Exception):
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                stream.cancel()
                return


async def _sse_events(
    stack: AsyncExitStack,
    stream: GenerationStream,
    meta: convert.ResponseMeta,
    record: _RequestRecord,
    *,
    logprobs: bool,
    usage: bool,
) -> AsyncIterator[bytes]:
    """SSE chunks; the lease is held until the last byte is sent or the client leaves."""
    status = 499  # unless the stream completes, the client went away
    async with stack:
        try:
            yield convert.chunk_event(meta, text="", logprobs=None, finish_reason=None, first=True)
            offset = 0
            calls = 0
            async for event in stream:
                if isinstance(event, Chunk):
                    record.first_token()
                    numbered = [(calls + i, call) for i, call in enumerate(event.tool_calls)]
                    calls += len(numbered)
                    yield convert.chunk_event(
                        meta,
                        text=event.text,
                        logprobs=event.logprobs if logprobs else None,
                        finish_reason=None,
                        offset=offset,
                        tool_calls=numbered,
                    )
                    offset += len(event.text)
                elif isinstance(event, Finished):
                    yield convert.chunk_event(
                        meta, text=None, logprobs=None, finish_reason=event.finish_reason
                    )
                    if usage:
                        yield convert.usage_event(meta, event)
                    yield convert.SSE_DONE
                    status = 200
                    record.done(status, event)
        except EngineError as exc:
            # Headers are gone already: report the error in-band, as OpenAI does.
            status = 500
            yield convert.sse(
                {
                    "error": {
                        "message": exc.message,
                        "type": exc.type,
                        "param": None,
                        "code": exc.code,
                    }
                }
            )
        finally:
            if status != 200:
                record.done(status, None)


class _RequestRecord:
    """One request's log line (model, status, tokens, latency, whether it waited on a load)
    and its metrics. Prompts are logged only when `log_prompts` is on."""

    def __init__(self, daemon: Daemon, kind: str, model: str) -> None:
        self.daemon = daemon
        self.metrics = daemon.metrics
        self.kind = kind
        self.model = model
        self.started = time.perf_counter()
        self.loaded_now = False
        self._first_token_seen = False

    def log_prompt(self, generation: GenerationRequest) -> None:
        if self.daemon.config.log_prompts:
            prompt = generation.messages if generation.messages is not None else generation.prompt
            log.info("%s model=%s prompt=%r", self.kind, self.model, prompt)

    def leased(self, lease: Lease) -> None:
        self.loaded_now = lease.loaded_now
        if lease.loaded_now:
            self.metrics.loads.labels(lease.key).inc()
            self.metrics.load_seconds.observe(lease.info.load_seconds)

    def first_token(self) -> None:
        if not self._first_token_seen:
            self._first_token_seen = True
            elapsed = time.perf_counter() - self.started
            self.metrics.time_to_first_token.labels(self.model).observe(elapsed)

    def done(self, status: int, finished: Finished | None) -> None:
        self.metrics.requests.labels(self.model, str(status)).inc()
        if finished is not None:
            self.metrics.prompt_tokens.labels(self.model).inc(finished.prompt_tokens)
            self.metrics.completion_tokens.labels(self.model).inc(finished.completion_tokens)
        tokens = f"{finished.prompt_tokens}+{finished.completion_tokens}" if finished else "-"
        log.info(
            "%s model=%s status=%d tokens=%s latency=%.3fs load=%s",
            self.kind,
            self.model,
            status,
            tokens,
            time.perf_counter() - self.started,
            "yes" if self.loaded_now else "no",
        )


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
