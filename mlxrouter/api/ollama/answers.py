"""Engine events -> Ollama answers: a whole chat or generate answer, or its NDJSON lines (one
JSON object a line, the last one `done: true` with the counts and durations); and the
discovery answers (`/api/tags`, `/api/show`, `/api/ps`) from the daemon's own cards and pool
status. Builds the Structs of `schemas.py`."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypedDict

import msgspec

from ...engine import Chunk, Finished, ToolCall
from ...errors import EngineError
from ...status import ModelCard, PoolStatus
from ..envelopes import OllamaError
from ..session import Answer, CompletionSession
from .schemas import (
    ChatReply,
    GenerateReply,
    ModelDetails,
    OllamaFunctionCall,
    OllamaToolCall,
    ReplyMessage,
    RunningAnswer,
    RunningModel,
    ShowAnswer,
    TagsAnswer,
    TagsModel,
)

#: what `/api/ps` says for an entry that stays until unloaded (or is busy): no expiry
NEVER = "9999-12-31T23:59:59Z"
#: `general.architecture` of a card without config.json's `model_type` (a remote id)
UNKNOWN_ARCHITECTURE = "unknown"
_SHOWN_CAPABILITIES = ("tools", "thinking", "vision")


def timestamp(unix: float | None = None) -> str:
    """RFC 3339, as Ollama writes times."""
    moment = datetime.now(UTC) if unix is None else datetime.fromtimestamp(unix, UTC)
    return moment.isoformat().replace("+00:00", "Z")


# ---- discovery --------------------------------------------------------------------------------


def details(card: ModelCard | None) -> ModelDetails:
    """Ollama's `family` is the architecture (config.json's `model_type`)."""
    bits = card.quantization_bits if card else None
    family = card.architecture if card else None
    return ModelDetails(
        parent_model="",
        format="safetensors",
        family=family or "",
        families=[family] if family else [],
        quantization_level=f"Q{bits}" if bits else "",
    )


def digest(card: ModelCard) -> str:
    """A stable sha256 for one id's files as discovered (id, time, size)."""
    key = f"{card.id}\0{card.created}\0{card.size_bytes}".encode()
    return hashlib.sha256(key).hexdigest()


def _tag(card: ModelCard) -> TagsModel:
    name = card.id
    return TagsModel(
        name=name,
        model=name,
        modified_at=timestamp(card.created),
        size=card.size_bytes,
        digest=digest(card),
        details=details(card),
    )


def tags(cards: Sequence[ModelCard]) -> TagsAnswer:
    return TagsAnswer(models=[_tag(card) for card in cards])


def show(card: ModelCard) -> ShowAnswer:
    """Ollama's `capabilities`: `completion` (every chat model generates), then the card's
    `tools`, `thinking` and `vision`; an embedding model's are `embedding` alone."""
    architecture = card.architecture or UNKNOWN_ARCHITECTURE
    # clients read the context under the architecture's name, as Ollama keys GGUF metadata
    info: dict[str, object] = {"general.architecture": architecture}
    if card.context_length:
        info[f"{architecture}.context_length"] = card.context_length
    shown = [c for c in _SHOWN_CAPABILITIES if c in card.capabilities]
    if card.type == "embedding":
        info[f"{architecture}.embedding_length"] = card.dimensions
    return ShowAnswer(
        modelfile="",
        parameters="",
        template="",
        details=details(card),
        model_info=info,
        capabilities=["embedding"] if card.type == "embedding" else ["completion", *shown],
        modified_at=timestamp(card.created),
    )


def running(pool: PoolStatus, cards: Sequence[ModelCard]) -> RunningAnswer:
    """`/api/ps`: the pool's entries; memory is unified, so all of it counts as VRAM."""
    by_id = {card.id: card for card in cards}
    models = []
    for entry in pool.entries:
        card = by_id.get(entry.id)
        models.append(
            RunningModel(
                name=entry.id,
                model=entry.id,
                size=entry.bytes,
                digest=digest(card) if card else "",
                details=details(card),
                expires_at=NEVER if entry.expires_at is None else timestamp(entry.expires_at),
                size_vram=entry.bytes,
                context_length=card.context_length if card else None,
            )
        )
    return RunningAnswer(models=models)


# ---- chat and generate ------------------------------------------------------------------------


class _Stats(TypedDict, total=False):
    done: bool
    done_reason: str
    total_duration: int
    load_duration: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int


Reply = ChatReply | GenerateReply


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _tool_call(call: ToolCall) -> OllamaToolCall:
    """Ollama gives arguments as an object, not as a JSON string."""
    arguments = msgspec.json.decode(call.arguments or "{}")
    if not isinstance(arguments, dict):
        arguments = {"value": arguments}
    return OllamaToolCall(function=OllamaFunctionCall(name=call.name, arguments=arguments))


@dataclass(slots=True)
class Replies:
    """One request's answers or streamed lines, and the durations (nanoseconds) of the last:
    `total_duration` from the request's start, `load_duration` until its lease was held (the
    model loaded, or found loaded), then the prefill and the generation as the engine timed
    them (`Finished`)."""

    kind: Literal["chat", "generate"]
    model: str
    started: float
    leased: float | None = None

    def _reply(self, text: str, reasoning: str, calls: Sequence[ToolCall], stats: _Stats) -> Reply:
        if self.kind == "chat":
            message = ReplyMessage(
                role="assistant",
                content=text,
                thinking=reasoning or None,
                tool_calls=[_tool_call(call) for call in calls] or None,
            )
            return ChatReply(model=self.model, created_at=timestamp(), message=message, **stats)
        return GenerateReply(
            model=self.model,
            created_at=timestamp(),
            response=text,
            thinking=reasoning or None,
            **stats,
        )

    def _stats(self, finished: Finished | None) -> _Stats:
        end = time.perf_counter()
        stats = _Stats(
            done=True,
            total_duration=_ns(end - self.started),
            load_duration=_ns((self.leased or end) - self.started),
        )
        if finished is not None:
            stats["done_reason"] = "length" if finished.finish_reason == "length" else "stop"
            stats["prompt_eval_count"] = finished.prompt_tokens
            stats["prompt_eval_duration"] = _ns(finished.prompt_seconds)
            stats["eval_count"] = finished.completion_tokens
            stats["eval_duration"] = _ns(finished.generation_seconds)
        return stats

    def chunk(self, chunk: Chunk) -> Reply:
        return self._reply(chunk.text, chunk.reasoning, chunk.tool_calls, _Stats(done=False))

    def last(self, finished: Finished) -> Reply:
        return self._reply("", "", (), self._stats(finished))

    def whole(self, answer: Answer) -> Reply:
        chunks, finished = answer
        text = "".join(c.text for c in chunks)
        reasoning = "".join(c.reasoning for c in chunks)
        calls = [call for c in chunks for call in c.tool_calls]
        return self._reply(text, reasoning, calls, self._stats(finished))

    def loaded(self, unloading: bool) -> Reply:
        """The answer to a request with nothing to generate: the model is loaded (or, with
        `keep_alive: 0`, unloads once idle)."""
        stats = self._stats(None)
        stats["done_reason"] = "unload" if unloading else "load"
        return self._reply("", "", (), stats)


def _line(reply: msgspec.Struct) -> bytes:
    return msgspec.json.encode(reply) + b"\n"


async def ndjson_answer(session: CompletionSession, replies: Replies) -> AsyncIterator[bytes]:
    """One line per chunk, then the `done` line. An engine error after the headers went out
    is a last `{"error": ...}` line, as Ollama sends it."""
    try:
        async for _, event in session.events():
            if isinstance(event, Chunk):
                yield _line(replies.chunk(event))
            else:
                yield _line(replies.last(event))
        await session.close(200, session.finished())
    except EngineError as exc:
        yield _line(OllamaError(error=exc.message))
        await session.close(500, error=exc.message)
