"""Engine events -> Anthropic answers: a whole `message`, or the stream of its events
(`message_start`, content blocks opened, filled and closed, `message_delta`, `message_stop`,
and a `ping` while nothing comes, a long prefill)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence

import msgspec

from ...engine import Chunk, Finished, ToolCall
from ...errors import EngineError
from ..envelopes import AnthropicError, AnthropicErrorBody
from ..session import CompletionSession
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
    reason = _STOP_REASONS.get(finished.finish_reason)
    if reason is None:
        raise EngineError(f"The engine finished with an unknown reason `{finished.finish_reason}`")
    return reason


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


async def sse_message(
    session: CompletionSession, message_id: str, *, ping_seconds: float | None = None
) -> AsyncIterator[bytes]:
    """The SSE events of a streamed message. An engine error after the headers went out is
    reported in-band, as an `error` event."""
    start = Message(
        id=message_id,
        model=session.model,
        content=[],
        usage=Usage(input_tokens=0, output_tokens=0),
    )
    blocks = _Blocks()
    try:
        yield sse(MessageStart(message=start))
        async for item in session.events(PING_SECONDS if ping_seconds is None else ping_seconds):
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
            body = MessageDeltaBody(stop_reason=stop_reason(event))
            yield sse(MessageDelta(delta=body, usage=usage(event)))
        yield sse(MessageStop())
        await session.close(200, session.finished())
    except EngineError as exc:
        yield sse(AnthropicError(error=AnthropicErrorBody(type="api_error", message=exc.message)))
        await session.close(500)
