"""OpenAI response shapes as msgspec Structs: the bodies the routes send are these, and the
OpenAPI document shows the same ones (one definition per shape).

Fields follow OpenAI's order. Where OpenAI leaves a key out rather than sending null (a chunk's
`delta`, `usage` on chunks, `tool_calls` on messages), the Struct omits its default.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..status import ModelCard

FinishReason = Literal["stop", "length", "tool_calls"]


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    #: a JSON object encoded as a string
    arguments: str


class ResponseToolCall(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class StreamedToolCall(msgspec.Struct, kw_only=True):
    """A tool call in a chunk's `delta`: whole, with its place in the message's list."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"]
    #: null when the answer is only tool calls
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None
    # --- mlxrouter / mlx_lm.server extensions: a thinking model's reasoning (the text
    # between its thinking markers), under both names clients read; omitted when empty ---
    reasoning_content: str | None = None
    reasoning: str | None = None


class TopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobItem(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(msgspec.Struct, kw_only=True):
    content: list[TokenLogprobItem]


class TextLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int


class CompletionTokensDetails(msgspec.Struct, kw_only=True):
    #: completion tokens a thinking model spent reasoning (its thinking markers included)
    reasoning_tokens: int


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ChatChoice(msgspec.Struct, kw_only=True):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChatLogprobs | None


class TextChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: TextLogprobs | None


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a chunk adds: `role` on the first, then `content`, `reasoning_content` +
    `reasoning` (the same text, for clients that read either) and/or `tool_calls`; the last
    chunk of a choice has an empty delta and its `finish_reason`."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[StreamedToolCall] | None = None


class ChatChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    delta: Delta
    finish_reason: FinishReason | None
    logprobs: ChatLogprobs | None = None


class TextChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: TextLogprobs | None = None


class _Answer(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What every answer and chunk starts with. `object` names the shape: `chat.completion`,
    `chat.completion.chunk` or `text_completion` (chunks of text completions too, as OpenAI
    streams them)."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str


class ChatCompletion(_Answer, kw_only=True):
    """`stream: true` answers `text/event-stream` instead: `ChatCompletionChunk`s, then
    `data: [DONE]`."""

    choices: list[ChatChoice]
    usage: Usage


class Completion(_Answer, kw_only=True):
    choices: list[TextChoice]
    usage: Usage


class ChatCompletionChunk(_Answer, kw_only=True):
    """One SSE event of a streamed chat completion. The last one, with
    `stream_options.include_usage`, has no choices and the `usage`."""

    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChunk(_Answer, kw_only=True):
    """One SSE event of a streamed text completion."""

    choices: list[TextChunkChoice]
    usage: Usage | None = None


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard]
