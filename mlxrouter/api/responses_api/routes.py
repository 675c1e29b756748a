"""`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`, `GET
/v1/responses/{id}/input_items`: the Responses surface over the same `CompletionSession` as
chat completions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, delete, get, post
from litestar import Response as HttpResponse
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from ...config import ModelSettings
from ...daemon import Daemon
from ...engine import GenerationRequest
from ...status import ErrorResponse
from .. import convert as chat_convert
from ..schemas import ChatCompletionRequest
from ..session import CompletionSession, SessionStream
from . import answers, convert
from .schemas import DeletedResponse, InputItemList, Response, ResponsesRequest
from .store import ResponseStore, Stored, input_item_page, with_ids

_ERRORS = {
    status: ResponseSpec(ErrorResponse, description="OpenAI error", generate_examples=False)
    for status in (400, 401, 404, 500, 503)
}


def _store(state: State) -> ResponseStore:
    """The app's response store, made on first use (one per app, as the daemon is)."""
    store: ResponseStore | None = state.get("responses_store")
    if store is None:
        store = ResponseStore()
        state["responses_store"] = store
    return store


@post(
    ["/v1/responses", "/responses"],
    status_code=200,
    responses={
        200: ResponseSpec(Response, description="The response (or its SSE events)"),
        **_ERRORS,
    },
)
async def create_response(
    request: Request[Any, Any, Any], state: State, data: JSONBody[ResponsesRequest]
) -> HttpResponse[Response] | SessionStream:
    daemon: Daemon = state.daemon
    store = _store(state)
    history = store.history(data.previous_response_id) if data.previous_response_id else []
    items = [*history, *with_ids(convert.input_items(data))]
    chat: ChatCompletionRequest = convert.chat_body(data, items)
    limit = daemon.config.default_max_tokens

    def build(settings: ModelSettings) -> list[GenerationRequest]:
        return [chat_convert.chat_request(chat, settings, default_max_tokens=limit)]

    session = CompletionSession(
        daemon,
        "responses",
        model=data.model,
        adapters=data.adapters,
        keep_alive=chat_convert.keep_alive(data.keep_alive),
    )
    await session.open(build, convert.image_refs(items, len(history)))
    response = answers.new_response(
        model=session.model,
        instructions=data.instructions,
        previous_response_id=data.previous_response_id,
        tools=data.tools or [],
        tool_choice=data.tool_choice or "auto",
        parallel_tool_calls=data.parallel_tool_calls is not False,
        temperature=data.temperature,
        top_p=data.top_p,
        max_output_tokens=data.max_output_tokens,
        store=data.store,
        metadata=data.metadata,
    )

    def keep(done: Response) -> None:
        if data.store:
            store.put(Stored(response=done, input=items), daemon.config.responses)

    if data.stream:
        events = answers.sse_events(session, response, keep)
        return SessionStream(session, events, media_type="text/event-stream")
    [(chunks, finished)] = await session.answers(request)
    done = answers.whole(response, chunks, finished)
    keep(done)
    return HttpResponse(done)


@get(
    ["/v1/responses/{response_id:str}", "/responses/{response_id:str}"],
    responses={200: ResponseSpec(Response, description="A stored response"), **_ERRORS},
)
async def get_response(state: State, response_id: FromPath[str]) -> Response:
    return _store(state).get(response_id).response


@delete(
    ["/v1/responses/{response_id:str}", "/responses/{response_id:str}"],
    status_code=200,
    responses={200: ResponseSpec(DeletedResponse, description="Deleted"), **_ERRORS},
)
async def delete_response(state: State, response_id: FromPath[str]) -> DeletedResponse:
    store = _store(state)
    store.get(response_id)  # 404 when unknown
    store.delete(response_id)
    return DeletedResponse(id=response_id)


@get(
    [
        "/v1/responses/{response_id:str}/input_items",
        "/responses/{response_id:str}/input_items",
    ],
    responses={**_ERRORS},
)
async def list_input_items(
    *,
    state: State,
    response_id: FromPath[str],
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    order: FromQuery[Literal["asc", "desc"]] = "desc",
    after: FromQuery[str | None] = None,
    include: FromQuery[list[str] | None] = None,
) -> InputItemList:
    """The items a stored response answered, OpenAI's list shape (`include` has nothing to
    add here)."""
    stored = _store(state).get(response_id)
    return input_item_page(stored, limit=limit, order=order, after=after)


ROUTES = [create_response, get_response, delete_response, list_input_items]
