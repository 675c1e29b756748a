"""Route handlers of Anthropic's Messages API: `POST /v1/messages` (plain or streamed; Claude
Code adds `?beta=true`) and `POST /v1/messages/count_tokens`. Errors under these paths answer
in Anthropic's envelope (`api/envelopes.py`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from litestar import Request, Response, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream

from ...config import ModelSettings
from ...daemon import Daemon
from ...engine import GenerationRequest
from ..envelopes import AnthropicError
from ..session import CompletionSession, request_images
from . import answers
from .convert import generation_request, image_refs
from .schemas import CountTokensRequest, Message, MessagesRequest, TokenCount


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(AnthropicError, description="Anthropic error", generate_examples=False)
        for status in statuses
    }


def _builder(daemon: Daemon, body: CountTokensRequest) -> Any:
    limit = daemon.config.default_max_tokens

    def build(settings: ModelSettings) -> list[GenerationRequest]:
        return [generation_request(body, settings, default_max_tokens=limit)]

    return build


_MESSAGE = ResponseSpec(Message, description="The message (or its SSE events when streaming)")
_COUNT = ResponseSpec(TokenCount, description="The prompt's tokens")


_ERRORS = _errors(400, 401, 404, 409, 413, 500, 503, 507)


@post("/v1/messages", status_code=200, responses={200: _MESSAGE, **_ERRORS})
async def messages(
    request: Request[Any, Any, Any], state: State, data: JSONBody[MessagesRequest]
) -> Response[Message] | Stream:
    daemon: Daemon = state.daemon
    session = CompletionSession(
        daemon, "messages", model=data.model, adapters=None, keep_alive=None
    )
    message_id = answers.message_id()
    images = image_refs(data)
    if data.stream:  # opened by the stream: it pings while the model loads
        build = _builder(daemon, data)
        return await answers.streamed_message(session, build, message_id, images=images)
    await session.open(_builder(daemon, data), images)
    ((chunks, finished),) = await session.answers(request)
    return Response(answers.full_message(message_id, session.model, chunks, finished))


@post("/v1/messages/count_tokens", status_code=200, responses={200: _COUNT, **_ERRORS})
async def count_tokens(state: State, data: JSONBody[CountTokensRequest]) -> TokenCount:
    """The prompt's tokens under the model's own chat template (the model is loaded)."""
    daemon: Daemon = state.daemon
    target = daemon.target(data.model, None)
    images = await request_images(daemon.config.images, target, image_refs(data))
    build = _builder(daemon, data)
    generation = replace(build(daemon.settings(target))[0], images=images)
    async with daemon.lease(target) as lease:
        return TokenCount(input_tokens=await daemon.count_tokens(lease, generation))


ROUTES = [messages, count_tokens]
