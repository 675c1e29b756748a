"""Engine events -> OpenAI answers: whole `ChatCompletion` / `Completion` bodies, and the SSE
chunks of a streamed one. Builds the Structs of `responses.py`; pure over the events, except
`sse()`, which drives a session's merged event stream."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

import msgspec

from ..engine import Chunk, Finished, TokenLogprob, ToolCall
from ..errors import EngineError
from ..status import ErrorBody, ErrorResponse
from .responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatLogprobs,
    Completion,
    CompletionChunk,
    CompletionTokensDetails,
    Delta,
    FinishReason,
    FunctionCall,
    PromptTokensDetails,
    ResponseToolCall,
    StreamedToolCall,
    TextChoice,
    TextChunkChoice,
    TextLogprobs,
    TokenLogprobItem,
    TopLogprob,
    Usage,
)
from .session import Answer, CompletionSession

SYSTEM_FINGERPRINT = "mlxrouter"
SSE_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class ResponseMeta:
    """What every response and chunk of one request share."""

    kind: Literal["chat", "text"]
    model: str
    logprobs: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex}"

    def fields(self, obj: str) -> _AnswerFields:
        """The fields every answer and chunk of this request starts with."""
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }


class _AnswerFields(TypedDict):
    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str


def usage(finished: Sequence[Finished]) -> Usage:
    """Token counts summed over a request's choices."""
    prompt = sum(f.prompt_tokens for f in finished)
    completion = sum(f.completion_tokens for f in finished)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=sum(f.cached_tokens for f in finished)
        ),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=sum(f.reasoning_tokens for f in finished)
        ),
    )


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(items: Sequence[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprobItem(
                token=item.token,
                logprob=item.logprob,
                bytes=_bytes(item.token),
                top_logprobs=[
                    TopLogprob(token=tok, logprob=lp, bytes=_bytes(tok)) for tok, lp in item.top
                ],
            )
            for item in items
        ]
    )


def text_logprobs(items: Sequence[TokenLogprob], offset: int = 0) -> TextLogprobs:
    offsets = []
    for item in items:
        offsets.append(offset)
        offset += len(item.token)
    return TextLogprobs(
        tokens=[item.token for item in items],
        token_logprobs=[item.logprob for item in items],
        top_logprobs=[dict(item.top) for item in items],
        text_offset=offsets,
    )


def _function(call: ToolCall) -> FunctionCall:
    return FunctionCall(name=call.name, arguments=call.arguments)


def _finish(reason: str) -> FinishReason:
    if reason not in ("stop", "length", "tool_calls"):
        raise EngineError(f"The engine finished with an unknown reason `{reason}`")
    return reason  # type: ignore[return-value]


# ---- whole answers ----------------------------------------------------------------------------


def full_response(meta: ResponseMeta, answers: Sequence[Answer]) -> ChatCompletion | Completion:
    """One choice per answer, in order; usage summed over them."""
    total = usage([finished for _, finished in answers])
    if meta.kind == "chat":
        chat = [_chat_choice(meta, i, *answer) for i, answer in enumerate(answers)]
        return ChatCompletion(**meta.fields("chat.completion"), choices=chat, usage=total)
    text = [_text_choice(meta, i, *answer) for i, answer in enumerate(answers)]
    return Completion(**meta.fields("text_completion"), choices=text, usage=total)


def _chat_choice(
    meta: ResponseMeta, index: int, chunks: Sequence[Chunk], finished: Finished
) -> ChatChoice:
    text = "".join(c.text for c in chunks)
    reasoning = "".join(c.reasoning for c in chunks) or None
    calls = [
        ResponseToolCall(id=call.id, function=_function(call))
        for c in chunks
        for call in c.tool_calls
    ]
    items = [lp for c in chunks for lp in c.logprobs]
    return ChatChoice(
        index=index,
        message=AssistantMessage(
            role="assistant",
            # null beside tool calls when there is no text (or only the blank line a model
            # writes between its reasoning and its call)
            content=None if calls and not text.strip() else text,
            reasoning_content=reasoning,
            reasoning=reasoning,
            tool_calls=calls or None,
        ),
        finish_reason=_finish(finished.finish_reason),
        logprobs=chat_logprobs(items) if meta.logprobs else None,
    )


def _text_choice(
    meta: ResponseMeta, index: int, chunks: Sequence[Chunk], finished: Finished
) -> TextChoice:
    items = [lp for c in chunks for lp in c.logprobs]
    return TextChoice(
        index=index,
        text="".join(c.text for c in chunks),
        finish_reason=_finish(finished.finish_reason),
        logprobs=text_logprobs(items) if meta.logprobs else None,
    )


# ---- streams ----------------------------------------------------------------------------------


def sse(event: msgspec.Struct) -> bytes:
    return b"data: " + msgspec.json.encode(event) + b"\n\n"


class _ChunkWriter:
    """Encodes one request's chunks: per choice, the text offset (text logprobs) and how many
    tool calls were sent (their `index`)."""

    def __init__(self, meta: ResponseMeta, choices: int) -> None:
        self.meta = meta
        self.offsets = [0] * choices
        self.calls = [0] * choices

    def _chat(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        return sse(
            ChatCompletionChunk(
                **self.meta.fields("chat.completion.chunk"), choices=choices, usage=usage
            )
        )

    def _text(self, choices: list[TextChunkChoice], usage: Usage | None = None) -> bytes:
        return sse(
            CompletionChunk(**self.meta.fields("text_completion"), choices=choices, usage=usage)
        )

    def opening(self, index: int) -> bytes:
        """The first chunk of a choice: the assistant role, no text yet."""
        if self.meta.kind == "chat":
            delta = Delta(role="assistant", content="")
            return self._chat([ChatChunkChoice(index=index, delta=delta, finish_reason=None)])
        return self._text([TextChunkChoice(index=index, text="", finish_reason=None)])

    def chunk(self, index: int, chunk: Chunk) -> bytes:
        logprobs = chunk.logprobs if self.meta.logprobs else None
        offset = self.offsets[index]
        self.offsets[index] += len(chunk.text)
        if self.meta.kind != "chat":
            text_lps = text_logprobs(logprobs, offset) if logprobs is not None else None
            choice = TextChunkChoice(
                index=index, text=chunk.text, finish_reason=None, logprobs=text_lps
            )
            return self._text([choice])
        calls = [
            StreamedToolCall(index=self.calls[index] + i, id=call.id, function=_function(call))
            for i, call in enumerate(chunk.tool_calls)
        ]
        self.calls[index] += len(calls)
        content = chunk.text if chunk.text or not (calls or chunk.reasoning) else None
        reasoning = chunk.reasoning or None
        delta = Delta(
            content=content,
            reasoning_content=reasoning,
            reasoning=reasoning,
            tool_calls=calls or None,
        )
        chat_lps = chat_logprobs(logprobs) if logprobs is not None else None
        return self._chat(
            [ChatChunkChoice(index=index, delta=delta, finish_reason=None, logprobs=chat_lps)]
        )

    def closing(self, index: int, finished: Finished) -> bytes:
        reason = _finish(finished.finish_reason)
        if self.meta.kind == "chat":
            return self._chat([ChatChunkChoice(index=index, delta=Delta(), finish_reason=reason)])
        return self._text([TextChunkChoice(index=index, text="", finish_reason=reason)])

    def usage(self, finished: Sequence[Finished]) -> bytes:
        if self.meta.kind == "chat":
            return self._chat([], usage(finished))
        return self._text([], usage(finished))


async def sse_answer(
    session: CompletionSession, meta: ResponseMeta, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE chunks of every choice as they come (each with its index), then usage and
    `[DONE]`. An engine error after the headers went out is reported in-band, as OpenAI does."""
    writer = _ChunkWriter(meta, session.choices)
    try:
        for index in range(session.choices):
            yield writer.opening(index)
        async for index, event in session.events():
            if isinstance(event, Chunk):
                yield writer.chunk(index, event)
            else:
                yield writer.closing(index, event)
        finished = session.finished()
        if include_usage:
            yield writer.usage(finished)
        yield SSE_DONE
        await session.close(200, finished)
    except EngineError as exc:
        error = ErrorBody(message=exc.message, type=exc.type, code=exc.code)
        yield sse(ErrorResponse(error=error))
        await session.close(500, error=exc.message)
