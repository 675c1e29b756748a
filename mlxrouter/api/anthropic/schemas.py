"""Anthropic Messages request and answer shapes as msgspec Structs.

Unknown fields are ignored (Claude Code adds them faster than any server follows:
`context_management`, `output_config`, `cache_control` on blocks, ...); the fields that are
present are validated. Answers and stream events are the bodies sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
StopSequences = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=16)
]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]

# ---- requests ---------------------------------------------------------------------------------


class ResultPart(msgspec.Struct, kw_only=True):
    """A part of a `tool_result`'s content (text is served; other kinds are refused)."""

    type: str
    text: str | None = None


class ImageSource(msgspec.Struct, kw_only=True):
    """An `image` block's source: `base64` (`media_type`, `data`) or `url`."""

    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ContentBlock(msgspec.Struct, kw_only=True):
    """A block of a message (or of `system`): `text`, `image`, `tool_use`, `tool_result`,
    `thinking`, `redacted_thinking`; one Struct for all, the fields of each kind checked in
    `convert`."""

    type: str
    text: str | None = None
    # image
    source: ImageSource | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None
    # thinking
    thinking: str | None = None
    signature: str | None = None


class MessageParam(msgspec.Struct, kw_only=True):
    #: `system` entries are folded into the system prompt (Claude Code sends them)
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class ToolParam(msgspec.Struct, kw_only=True):
    """A client tool (`input_schema`); typed server tools (web search, ...) have none and are
    not offered to the model."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(msgspec.Struct, kw_only=True):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None


class CountTokensRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/messages/count_tokens`: what shapes the prompt."""

    model: str | None = None
    messages: Annotated[list[MessageParam], msgspec.Meta(min_length=1)]
    system: str | list[ContentBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None


class MessagesRequest(CountTokensRequest, kw_only=True):
    """`POST /v1/messages`."""

    max_tokens: PositiveInt
    stop_sequences: StopSequences | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    metadata: dict[str, Any] | None = None
    stream: bool = False


# ---- answers ----------------------------------------------------------------------------------


class TextBlock(msgspec.Struct, kw_only=True, tag="text", tag_field="type"):
    text: str


class ThinkingBlock(msgspec.Struct, kw_only=True, tag="thinking", tag_field="type"):
    thinking: str
    signature: str = ""


class ToolUseBlock(msgspec.Struct, kw_only=True, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


AnswerBlock = TextBlock | ThinkingBlock | ToolUseBlock


class Usage(msgspec.Struct, kw_only=True):
    """Anthropic counts prompt tokens read from the cache apart from `input_tokens`."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[AnswerBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(msgspec.Struct, kw_only=True):
    input_tokens: int


# ---- stream events ----------------------------------------------------------------------------


class MessageStart(msgspec.Struct, kw_only=True, tag="message_start", tag_field="type"):
    message: Message


class Ping(msgspec.Struct, kw_only=True, tag="ping", tag_field="type"):
    pass


class BlockStart(msgspec.Struct, kw_only=True, tag="content_block_start", tag_field="type"):
    index: int
    content_block: AnswerBlock


class TextDelta(msgspec.Struct, kw_only=True, tag="text_delta", tag_field="type"):
    text: str


class ThinkingDelta(msgspec.Struct, kw_only=True, tag="thinking_delta", tag_field="type"):
    thinking: str


class InputJsonDelta(msgspec.Struct, kw_only=True, tag="input_json_delta", tag_field="type"):
    partial_json: str


class BlockDelta(msgspec.Struct, kw_only=True, tag="content_block_delta", tag_field="type"):
    index: int
    delta: TextDelta | ThinkingDelta | InputJsonDelta


class BlockStop(msgspec.Struct, kw_only=True, tag="content_block_stop", tag_field="type"):
    index: int


class MessageDeltaBody(msgspec.Struct, kw_only=True):
    stop_reason: StopReason
    stop_sequence: str | None = None


class MessageDelta(msgspec.Struct, kw_only=True, tag="message_delta", tag_field="type"):
    delta: MessageDeltaBody
    usage: Usage


class MessageStop(msgspec.Struct, kw_only=True, tag="message_stop", tag_field="type"):
    pass


StreamEvent = MessageStart | Ping | BlockStart | BlockDelta | BlockStop | MessageDelta | MessageStop
