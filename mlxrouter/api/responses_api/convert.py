"""Responses requests -> the chat path's request: `input` items become chat messages,
`instructions` a system message, flat function tools chat tools, `text.format` a
`response_format`, `reasoning.effort` `reasoning_effort`. `api.convert.chat_request` then
makes the engine request, so tools, constraints and thinking behave as on the chat path."""

from __future__ import annotations

import logging
from typing import Any

from ...errors import InvalidRequestError
from ...images import ImageRef
from ..schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ContentPart,
    ImageUrl,
    ToolCall,
    ToolCallFunction,
)
from .schemas import InputItem, InputPart, ResponsesRequest

log = logging.getLogger(__name__)

_TEXT_PARTS = {"input_text", "output_text", "text"}


def input_items(body: ResponsesRequest) -> list[InputItem]:
    """The request's own `input` as items (a string is one user message)."""
    if isinstance(body.input, str):
        return [InputItem(role="user", content=body.input)]
    return list(body.input)


def chat_body(body: ResponsesRequest, items: list[InputItem]) -> ChatCompletionRequest:
    """The chat request that `body` asks for, over `items` (earlier turns included)."""
    messages = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    for item in items:
        _add(messages, item)
    if not any(m.role in ("user", "assistant", "tool") for m in messages):
        raise InvalidRequestError("`input` has no message to answer", param="input")
    tools = _tools(body.tools)
    effort = body.reasoning.effort if body.reasoning else None
    return ChatCompletionRequest(
        model=body.model,
        messages=messages,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        top_k=body.top_k,
        min_p=body.min_p,
        adapters=body.adapters,
        keep_alive=body.keep_alive,
        tools=tools or None,
        tool_choice=_tool_choice(body.tool_choice) if tools else None,
        response_format=_response_format(body),
        reasoning_effort=effort,
    )


def _text(content: str | list[InputPart] | None, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type not in _TEXT_PARTS:
            raise InvalidRequestError(
                f"Content parts of type `{part.type}` are not supported by this model", param=param
            )
        texts.append(part.text or "")
    return "".join(texts)


def _content(content: str | list[InputPart] | None) -> str | list[ContentPart]:
    """A message's content; with an `input_image` among its parts, the chat path's parts
    (`image_refs` gives the images, in the same order)."""
    if not isinstance(content, list) or all(p.type != "input_image" for p in content):
        return _text(content, "input")
    return [
        ContentPart(type="image_url", image_url=ImageUrl(url=part.image_url or ""))
        if part.type == "input_image"
        else ContentPart(type="text", text=_text([part], "input"))
        for part in content
    ]


def image_refs(items: list[InputItem], earlier: int) -> list[ImageRef]:
    """The `input_image` parts of `items` (user messages only), in order; the first `earlier`
    items are the previous response's, named as such in errors."""
    refs = []
    for k, item in enumerate(items):
        if item.type != "message" or not isinstance(item.content, list):
            continue
        for j, part in enumerate(item.content):
            if part.type != "input_image":
                continue
            where = (
                f"input[{k - earlier}].content[{j}]"
                if k >= earlier
                else f"previous_response_id's input[{k}].content[{j}]"
            )
            if item.role != "user":
                raise InvalidRequestError(
                    f"The image at {where} is in a `{item.role}` message; images are taken "
                    "in user messages only",
                    param=where,
                )
            if part.file_id is not None:
                raise InvalidRequestError(
                    f"The image at {where} names a `file_id`; there is no Files API here: "
                    "send `image_url` (a data URL)",
                    param=where,
                )
            if not part.image_url:
                raise InvalidRequestError(
                    f"The `input_image` part at {where} needs `image_url`", param=where
                )
            refs.append(ImageRef(where=where, source=part.image_url))
    return refs


def _add(messages: list[ChatMessage], item: InputItem) -> None:
    if item.type == "message":
        if item.role is None:
            raise InvalidRequestError("a `message` input item needs a `role`", param="input")
        messages.append(ChatMessage(role=item.role, content=_content(item.content)))
    elif item.type == "function_call":
        if not item.name or item.call_id is None:
            raise InvalidRequestError(
                "a `function_call` input item needs `name` and `call_id`", param="input"
            )
        call = ToolCall(
            id=item.call_id,
            function=ToolCallFunction(name=item.name, arguments=item.arguments or "{}"),
        )
        last = messages[-1] if messages else None
        if last is not None and last.role == "assistant" and last.tool_calls is not None:
            last.tool_calls.append(call)  # parallel calls: one assistant turn
        elif last is not None and last.role == "assistant" and not last.tool_calls:
            last.tool_calls = [call]  # the text the model wrote before its call
        else:
            messages.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
    elif item.type == "function_call_output":
        if item.call_id is None:
            raise InvalidRequestError(
                "a `function_call_output` input item needs `call_id`", param="input"
            )
        output = _text(item.output, "input")
        messages.append(ChatMessage(role="tool", content=output, tool_call_id=item.call_id))
    elif item.type != "reasoning":  # earlier reasoning is not sent back to the model
        log.debug("ignoring a `%s` input item", item.type)


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Flat function tools in the chat shape; hosted tools (web_search, namespace, ...) are
    not served here and are left out."""
    served = []
    for tool in tools or []:
        if tool.get("type") != "function":
            log.debug("ignoring a `%s` tool: only function tools are served", tool.get("type"))
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("a function tool needs a `name`", param="tools")
        function: dict[str, Any] = {"name": name}
        for key in ("description", "parameters"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        served.append({"type": "function", "function": function})
    return served


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """`{"type": "function", "name": ...}` in the chat shape; a hosted tool's choice is auto."""
    if not isinstance(choice, dict):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    log.debug("tool_choice `%s` names a tool not served here: auto", choice.get("type"))
    return "auto"


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if not isinstance(fmt.schema, dict):
        raise InvalidRequestError(
            "`text.format.schema` must be a JSON schema object", param="text.format"
        )
    return {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema}}
