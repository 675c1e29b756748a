"""Engine events -> Anthropic answers: a whole `message`, or the stream of its events
(`message_start`, content blocks opened, filled and closed, `message_delta`, `message_stop`,
and a `ping` while nothing comes: a load, a wait for room in the pool, a long prefill)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec

from ...config import ModelSettings
from ...engine import Chunk, Finished, GenerationRequest, ToolCall
from ...errors import EngineError, MlxRouterError
from ...images import ImageRef
from ..envelopes import ANTHROPIC_PREFIX, AnthropicError, AnthropicErrorBody, ApiError, error_bytes
from ..errors import status_of
from ..session import CompletionSession, SessionStream
from .schemas import (
    AnswerBlock,
    BlockDelta,
    BlockStart,
    BlockStop,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageDeltaBody,
    MessageStart,
    MessageStop,
    Ping,
    StopReason,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    Usage,
)

#: seconds without an event before a `ping` (Anthropic's clients time out idle streams)
PING_SECONDS = 5.0

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
}


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def usage(finished: Finished) -> Usage:
    cached = finished.cached_tokens
    return Usage(
        input_tokens=finished.prompt_tokens - cached,
        output_tokens=finished.completion_tokens,
        cache_read_input_tokens=cached,
    )


def stop_reason(finished: Finished) -> StopReason:
    if finished.finish_reason == "stop" and finished.stop_sequence is not None:
        return "stop_sequence"
    reason = _STOP_REASONS.get(finished.finish_reason)
    if reason is None:
        raise EngineError(f"The engine finished with an unknown reason `{finished.finish_reason}`")
    return reason


def stop_sequence(finished: Finished) -> str | None:
    """The matched stop string, set only with `stop_reason: "stop_sequence"`."""
    return finished.stop_sequence if finished.finish_reason == "stop" else None


def _tool_use(call: ToolCall) -> ToolUseBlock:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise EngineError(f"The model's call to `{call.name}` has arguments that are not JSON")
    return ToolUseBlock(id=call.id, name=call.name, input=arguments)


def full_message(
    message_id: str, model: str, chunks: Sequence[Chunk], finished: Finished
) -> Message:
    """The whole answer: its thinking, its text (left out when blank beside tool calls) and
    its tool calls, as blocks."""
    reasoning = "".join(c.reasoning for c in chunks)
    text = "".join(c.text for c in chunks)
    calls = [_tool_use(call) for c in chunks for call in c.tool_calls]
    blocks: list[AnswerBlock] = [ThinkingBlock(thinking=reasoning)] if reasoning else []
    if text.strip() or not calls:
        blocks.append(TextBlock(text=text))
    blocks.extend(calls)
    return Message(
        id=message_id,
        model=model,
        content=blocks,
        stop_reason=stop_reason(finished),
        stop_sequence=stop_sequence(finished),
        usage=usage(finished),
    )


def sse(event: StreamEvent | AnthropicError) -> bytes:
    name = event.type if isinstance(event, AnthropicError) else event.__struct_config__.tag
    return f"event: {name}\ndata: ".encode() + msgspec.json.encode(event) + b"\n\n"


class _Blocks:
    """The stream's open content block, by kind: a new kind closes it and opens the next.
    Blank text is held back until text that is not blank follows (the line a model writes
    between its reasoning and a tool call is no text block)."""

    def __init__(self) -> None:
        self.count = 0
        self.kind = ""
        self.held = ""

    def _open(self, block: AnswerBlock, kind: str) -> list[StreamEvent]:
        events = self.close()
        self.kind = kind
        events.append(BlockStart(index=self.count, content_block=block))
        return events

    def close(self) -> list[StreamEvent]:
        if not self.kind:
            return []
        self.kind = ""
        self.count += 1
        return [BlockStop(index=self.count - 1)]

    def chunk(self, chunk: Chunk) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if chunk.reasoning:
            if self.kind != "thinking":
                events += self._open(ThinkingBlock(thinking=""), "thinking")
            events.append(
                BlockDelta(index=self.count, delta=ThinkingDelta(thinking=chunk.reasoning))
            )
        if chunk.text:
            events += self.text(chunk.text)
        for call in chunk.tool_calls:
            block = _tool_use(call)
            events += self._open(ToolUseBlock(id=block.id, name=block.name, input={}), "tool")
            delta = InputJsonDelta(partial_json=msgspec.json.encode(block.input).decode())
            events.append(BlockDelta(index=self.count, delta=delta))
        return events

    def text(self, text: str, *, final: bool = False) -> list[StreamEvent]:
        text, self.held = self.held + text, ""
        if self.kind != "text" and not text.strip() and not final:
            self.held = text
            return []
        events = [] if self.kind == "text" else self._open(TextBlock(text=""), "text")
        if text:
            events.append(BlockDelta(index=self.count, delta=TextDelta(text=text)))
        return events

    def end(self) -> list[StreamEvent]:
        """Close the last block; an answer with no block at all gets an empty text block."""
        events = self.text("", final=True) if self.count == 0 and not self.kind else []
        return events + self.close()


async def streamed_message(
    session: CompletionSession,
    build: Callable[[ModelSettings], list[GenerationRequest]],
    message_id: str,
    *,
    images: Sequence[ImageRef] = (),
    ping_seconds: float | None = None,
) -> SessionStream:
    """Open the session and stream the message. An error within the first ping interval is
    an HTTP error, as for a plain request; a longer wait (a load, a queue for room in the pool)
    starts the stream at once, with pings until the prompt is accepted, and an error then is
    an in-band `error` event."""
    every = PING_SECONDS if ping_seconds is None else ping_seconds
    opening = asyncio.ensure_future(session.open(build, images))
    # open() records and closes on failure; this marks an error nobody awaits as seen
    opening.add_done_callback(lambda task: task.cancelled() or task.exception())
    try:
        await asyncio.wait({opening}, timeout=every)
    except BaseException:
        await session.close()  # open() releases what it took once it sees the session closed
        raise
    if opening.done():
        opening.result()
        pending = None
    else:
        pending = opening
    body = sse_message(session, message_id, ping_seconds=every, opening=pending)
    return SessionStream(session, body, media_type="text/event-stream")


async def _pings_until_open(opening: asyncio.Future[None], every: float) -> AsyncIterator[bytes]:
    """A ping now (the headers go out with it), then one every `every` seconds, until the
    session is open; its error, if any, is raised."""
    while not opening.done():
        yield sse(Ping())
        await asyncio.wait({opening}, timeout=every)
    opening.result()


async def sse_message(
    session: CompletionSession,
    message_id: str,
    *,
    ping_seconds: float | None = None,
    opening: asyncio.Future[None] | None = None,
) -> AsyncIterator[bytes]:
    """The SSE events of a streamed message, after pings while `opening` (the session's
    `open()`, when still running) goes on. An error after the headers went out is reported
    in-band, as an `error` event."""
    every = PING_SECONDS if ping_seconds is None else ping_seconds
    blocks = _Blocks()
    try:
        if opening is not None:
            async for ping in _pings_until_open(opening, every):
                yield ping
        # the prompt's tokens as `message_delta` will count them (known once accepted)
        prompt = sum(started.prompt_tokens for started in session.started)
        cached = sum(started.cached_tokens for started in session.started)
        start = Message(
            id=message_id,
            model=session.model,
            content=[],
            usage=Usage(
                input_tokens=prompt - cached, output_tokens=0, cache_read_input_tokens=cached
            ),
        )
        yield sse(MessageStart(message=start))
        async for item in session.events(every):
            if item is None:
                yield sse(Ping())
                continue
            _, event = item
            if isinstance(event, Chunk):
                for out in blocks.chunk(event):
                    yield sse(out)
                continue
            for out in blocks.end():
                yield sse(out)
            body = MessageDeltaBody(
                stop_reason=stop_reason(event), stop_sequence=stop_sequence(event)
            )
            yield sse(MessageDelta(delta=body, usage=usage(event)))
        yield sse(MessageStop())
        await session.close(200, session.finished())
    except EngineError as exc:
        yield sse(AnthropicError(error=AnthropicErrorBody(type="api_error", message=exc.message)))
        await session.close(500, error=exc.message)
    except MlxRouterError as exc:  # open() failed after the pings began (it closed the session)
        error = ApiError(status=status_of(exc), message=exc.message)
        yield b"event: error\ndata: " + error_bytes(ANTHROPIC_PREFIX, error) + b"\n\n"
