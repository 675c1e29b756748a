"""Responses API shapes as msgspec Structs: the request (unknown fields tolerated, present ones
validated) and the answer (`Response`, its output items, usage, and the streamed events' parts).
Field names follow OpenAI's; the openai SDK parses them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..schemas import PositiveInt, Probability, ReasoningEffort, Temperature


class InputPart(msgspec.Struct, kw_only=True):
    """A message's content part: `input_text`, `output_text` (or `text`), `input_image` (its
    `image_url`, a data URL; `file_id` is refused); others are refused."""

    type: str
    text: str | None = None
    # input_image
    image_url: str | None = None
    file_id: str | None = None
    #: OpenAI's resolution hint; accepted, no effect (the model's processor sizes the image)
    detail: str | None = None


class InputItem(msgspec.Struct, kw_only=True):
    """One `input` item: a `message` (the default type), a `function_call`, a
    `function_call_output`, or a `reasoning` item (ignored)."""

    type: str = "message"
    id: str | None = None
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[InputPart] | None = None
    # function_call
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    # function_call_output
    output: str | list[InputPart] | None = None


class TextFormat(msgspec.Struct, kw_only=True):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat | None = None


class ReasoningConfig(msgspec.Struct, kw_only=True):
    effort: ReasoningEffort | None = None
    summary: str | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    input: Annotated[str, msgspec.Meta(min_length=1)] | list[InputItem] = msgspec.field(
        default_factory=list
    )
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    include: list[str] = msgspec.field(default_factory=list)
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    prompt_cache_key: str | None = None
    user: str | None = None
    # --- accepted as Codex CLI sends it, no effect here ---
    client_metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # --- mlxrouter extensions, as on the chat path ---
    seed: int | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    min_p: Probability | None = None
    adapters: str | None = None
    keep_alive: str | float | None = None


# ---- answers -----------------------------------------------------------------------------------

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(msgspec.Struct, kw_only=True):
    type: Literal["output_text"] = "output_text"
    text: str = ""
    annotations: list[Any] = msgspec.field(default_factory=list)


class ReasoningText(msgspec.Struct, kw_only=True):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str = ""


class MessageItem(msgspec.Struct, kw_only=True, tag="message", tag_field="type"):
    id: str
    status: ItemStatus = "in_progress"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = msgspec.field(default_factory=list)


class FunctionCallItem(msgspec.Struct, kw_only=True, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str = ""
    status: ItemStatus = "in_progress"


class ReasoningItem(msgspec.Struct, kw_only=True, tag="reasoning", tag_field="type"):
    id: str
    summary: list[Any] = msgspec.field(default_factory=list)
    content: list[ReasoningText] = msgspec.field(default_factory=list)
    status: ItemStatus = "in_progress"


OutputItem = MessageItem | FunctionCallItem | ReasoningItem


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class Response(msgspec.Struct, kw_only=True):
    """A response object: answered, streamed in `response.*` events, stored, fetched."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
    model: str
    output: list[OutputItem] = msgspec.field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    store: bool = True
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    usage: ResponseUsage | None = None


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


# ---- GET /v1/responses/{id}/input_items -------------------------------------------------------


class ListedPart(msgspec.Struct, kw_only=True):
    type: str
    text: str | None = None


class ListedItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A stored input item as OpenAI lists it: with its id and status, a message's content
    as parts (`input_text`, or `output_text` for the assistant's)."""

    id: str
    type: str
    status: str = ""
    role: str | None = None
    content: list[ListedPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ListedPart] | None = None


class InputItemList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ListedItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
