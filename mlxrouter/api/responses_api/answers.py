"""Engine events -> a `Response` and its streamed `response.*` events.

One `ResponseWriter` serves both: fed each `Chunk`, it builds the output items (reasoning,
message, function calls) and yields the SSE events that announce them; a whole answer feeds
it the same way and drops the events. Item ids, call ids and `sequence_number`s agree between
the events and the final response, as the openai SDK's stream accumulator checks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec

from ...engine import Chunk, Finished
from ...errors import EngineError
from ..session import CompletionSession
from .schemas import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    MessageItem,
    OutputText,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningText,
    Response,
    ResponseUsage,
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def new_response(**fields: Any) -> Response:
    return Response(id=new_id("resp"), created_at=int(time.time()), **fields)


def usage(finished: Finished) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=finished.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=finished.cached_tokens),
        output_tokens=finished.completion_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=finished.reasoning_tokens),
        total_tokens=finished.prompt_tokens + finished.completion_tokens,
    )


Event = dict[str, Any]


class ResponseWriter:
    """Builds `response.output` from a choice's chunks, yielding the events as it goes."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self.sequence = 0
        self._open: MessageItem | ReasoningItem | None = None
        self._blank = ""  # whitespace held back: dropped if a tool call follows it

    def event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _lifecycle(self, kind: str) -> Event:
        return self.event(kind, response=self.response)

    def opening(self) -> Iterator[Event]:
        yield self._lifecycle("response.created")
        yield self._lifecycle("response.in_progress")

    def _where(self, item: MessageItem | ReasoningItem) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": len(self.response.output) - 1}

    def _add(self, item: MessageItem | FunctionCallItem | ReasoningItem) -> Event:
        self.response.output.append(item)
        return self.event(
            "response.output_item.added",
            output_index=len(self.response.output) - 1,
            item=msgspec.structs.replace(item),
        )

    def _open_item(self, kind: type[MessageItem] | type[ReasoningItem]) -> Iterator[Event]:
        if isinstance(self._open, kind):
            return
        yield from self._close()
        if kind is MessageItem:
            message = MessageItem(id=new_id("msg"))
            yield self._add(message)
            message.content.append(OutputText())
            part: OutputText | ReasoningText = OutputText()
            self._open = message
        else:
            reasoning = ReasoningItem(id=new_id("rs"))
            yield self._add(reasoning)
            reasoning.content.append(ReasoningText())
            part = ReasoningText()
            self._open = reasoning
        yield self.event(
            "response.content_part.added", **self._where(self._open), content_index=0, part=part
        )

    def _close(self, status: str = "completed") -> Iterator[Event]:
        item, self._open = self._open, None
        if item is None:
            return
        item.status = status  # type: ignore[assignment]
        where = {**self._where(item), "content_index": 0}
        part = item.content[0]
        if isinstance(item, MessageItem):
            yield self.event("response.output_text.done", **where, text=part.text, logprobs=[])
        else:
            yield self.event("response.reasoning_text.done", **where, text=part.text)
        yield self.event("response.content_part.done", **where, part=part)
        yield self._done(item)

    def _done(self, item: MessageItem | FunctionCallItem | ReasoningItem) -> Event:
        index = self.response.output.index(item)
        return self.event("response.output_item.done", output_index=index, item=item)

    def chunk(self, chunk: Chunk) -> Iterator[Event]:
        if chunk.reasoning:
            yield from self._open_item(ReasoningItem)
            yield from self._delta("response.reasoning_text.delta", chunk.reasoning)
        if chunk.text:
            if not isinstance(self._open, MessageItem) and not (self._blank + chunk.text).strip():
                self._blank += chunk.text
            else:
                text, self._blank = self._blank + chunk.text, ""
                yield from self._open_item(MessageItem)
                yield from self._delta("response.output_text.delta", text, logprobs=[])
        for call in chunk.tool_calls:
            yield from self._close()
            self._blank = ""
            item = FunctionCallItem(id=new_id("fc"), call_id=call.id, name=call.name)
            yield self._add(item)
            index = len(self.response.output) - 1
            where = {"item_id": item.id, "output_index": index}
            item.arguments = call.arguments
            yield self.event(
                "response.function_call_arguments.delta", **where, delta=call.arguments
            )
            yield self.event(
                "response.function_call_arguments.done", **where, arguments=call.arguments
            )
            item.status = "completed"
            yield self._done(item)

    def _delta(self, kind: str, text: str, **extra: Any) -> Iterator[Event]:
        item = self._open
        if item is None:  # never: a delta follows `_open_item`
            return
        item.content[0].text += text
        yield self.event(kind, **self._where(item), content_index=0, delta=text, **extra)

    def finish(self, finished: Finished) -> Iterator[Event]:
        """Closes the open item (a message, even empty, when nothing else was said) and yields
        `response.completed`, or `response.incomplete` when the output ran out of tokens."""
        cut = finished.finish_reason == "length"
        if not self.response.output or self._blank:
            yield from self._open_item(MessageItem)
            if self._blank:
                yield from self._delta("response.output_text.delta", self._blank, logprobs=[])
                self._blank = ""
        yield from self._close("incomplete" if cut else "completed")
        self.response.usage = usage(finished)
        if cut:
            self.response.status = "incomplete"
            self.response.incomplete_details = IncompleteDetails()
            yield self._lifecycle("response.incomplete")
        else:
            self.response.status = "completed"
            yield self._lifecycle("response.completed")


def whole(response: Response, chunks: list[Chunk], finished: Finished) -> Response:
    writer = ResponseWriter(response)
    for chunk in chunks:
        for _ in writer.chunk(chunk):
            pass
    for _ in writer.finish(finished):
        pass
    return writer.response


def _sse(event: Event) -> bytes:
    kind = str(event["type"]).encode()
    return b"event: " + kind + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


async def sse_events(
    session: CompletionSession, response: Response, on_done: Callable[[Response], None]
) -> AsyncIterator[bytes]:
    """The `response.*` events of one streamed answer; `on_done` gets the final response. An
    engine error after the headers went out is an `error` event."""
    writer = ResponseWriter(response)
    try:
        for event in writer.opening():
            yield _sse(event)
        async for _, item in session.events():
            events = writer.chunk(item) if isinstance(item, Chunk) else writer.finish(item)
            for event in events:
                yield _sse(event)
        on_done(writer.response)
        await session.close(200, session.finished())
    except EngineError as exc:
        yield _sse(writer.event("error", code=exc.code, message=exc.message, param=None))
        await session.close(500, error=exc.message)
