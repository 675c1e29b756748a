"""The dashboard's read routes: `GET /admin/activity` (the ring of the last requests) and
`GET /admin/events` (one server-sent-event stream of pool changes, requests and log lines).

Both sit behind the app's API-key guard like every admin route, and answer 404 as if absent
when `ui` is off (read per request: a config edit turns them on or off live).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from litestar import get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.response import Stream

from ..activity import Activity, Event
from ..activity import heartbeat as heartbeat_event
from ..daemon import Daemon
from ..status import ActivityAnswer, ErrorResponse
from .session import SSE_HEADERS

#: seconds of silence before a `heartbeat` event (proxies and browsers drop idle streams)
HEARTBEAT_SECONDS = 15.0


def _enabled(state: State) -> Daemon:
    daemon: Daemon = state.daemon
    if not daemon.config.ui_config.enabled:
        raise NotFoundException  # the router's own "not an endpoint" answer
    return daemon


_ERRORS = {
    status: ResponseSpec(ErrorResponse, description="OpenAI error", generate_examples=False)
    for status in (401, 404)
}


@get(
    "/admin/activity",
    responses={200: ResponseSpec(ActivityAnswer, description="The last requests"), **_ERRORS},
)
async def admin_activity(state: State) -> ActivityAnswer:
    return _enabled(state).activity.answer()


@get("/admin/events", responses=_ERRORS)
async def admin_events(state: State) -> Stream:
    """`text/event-stream`: `pool`, `request.started`, `request.finished`, `log` and
    `heartbeat` events (README lists their fields); it ends on drain and shutdown."""
    daemon = _enabled(state)
    return Stream(
        _sse(daemon.activity, HEARTBEAT_SECONDS),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


async def _sse(activity: Activity, heartbeat: float) -> AsyncIterator[bytes]:
    subscription = activity.subscribe()
    try:
        # Sent at once, so a client knows it is subscribed: the comment for readers of the
        # raw stream, a heartbeat for an EventSource (which fires `open` on the headers, sent
        # before this generator subscribes, and never shows comments).
        yield b": mlxrouter events\n\n" + _frame(heartbeat_event(0))
        while (event := await subscription.next(heartbeat)) is not None:
            yield _frame(event)
    finally:  # the client went (Litestar cancels the sender), or the feed closed
        activity.unsubscribe(subscription)


def _frame(event: Event) -> bytes:
    return b"event: " + event.name.encode() + b"\ndata: " + event.data + b"\n\n"


ROUTES = [admin_activity, admin_events]
