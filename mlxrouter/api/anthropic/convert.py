"""Anthropic Messages requests -> engine requests (`GenerationRequest`): the system prompt
(with `system` entries of `messages` folded in), content blocks as the chat templates expect
OpenAI-shaped messages, tools and `tool_choice`, `thinking`, sampling.

Pure functions over plain data; the routes call them at the boundary."""

from __future__ import annotations

from typing import Any

from ...config import ModelSettings
from ...engine import GenerationRequest, SamplingParams
from ...errors import InvalidRequestError
from ...images import ImageRef
from .schemas import ContentBlock, CountTokensRequest, MessageParam, MessagesRequest, ResultPart


def generation_request(
    body: CountTokensRequest, settings: ModelSettings, *, default_max_tokens: int
) -> GenerationRequest:
    """The engine request for `body`; a count_tokens body gives the same prompt. A
    `max_tokens` beyond the room the context leaves is capped to it (`cap_max_tokens`)."""
    full = body if isinstance(body, MessagesRequest) else None
    sampling = SamplingParams()
    if full is not None:
        sampling = SamplingParams(
            temperature=_first(full.temperature, settings.temperature, 1.0),
            top_p=_first(full.top_p, settings.top_p, 1.0),
            top_k=_first(full.top_k, settings.top_k, 0),
            min_p=_first(settings.min_p, 0.0),
        )
    tools = _tools(body)
    required = body.tool_choice is not None and body.tool_choice.type in ("any", "tool")
    return GenerationRequest(
        messages=template_messages(body, settings),
        tools=tools,
        tool_call_required=bool(tools) and required,
        max_tokens=full.max_tokens if full is not None else 1,
        default_max_tokens=_first(settings.max_tokens, default_max_tokens),
        cap_max_tokens=True,
        stop=tuple(s for s in (full.stop_sequences or []) if s) if full is not None else (),
        sampling=sampling,
        chat_template_kwargs={**settings.chat_template_kwargs, **_thinking(body)},
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _thinking(body: CountTokensRequest) -> dict[str, Any]:
    """`thinking` onto the template's switch; `adaptive` leaves the model's default."""
    kind = body.thinking.type if body.thinking is not None else None
    if kind == "enabled":
        return {"enable_thinking": True}
    if kind == "disabled":
        return {"enable_thinking": False}
    return {}


def template_messages(body: CountTokensRequest, settings: ModelSettings) -> list[dict[str, Any]]:
    """The conversation as OpenAI-shaped template messages, the system prompt first."""
    system = [] if body.system is None else [_text(body.system, "system")]
    messages: list[dict[str, Any]] = []
    for message in body.messages:
        if message.role == "system":
            system.append(_text(message.content, "messages"))
        else:
            messages.extend(_turn(message))
    prompt = "\n\n".join(part for part in system if part) or settings.system_prompt
    return [{"role": "system", "content": prompt}, *messages] if prompt else messages


def _text(content: str | list[ContentBlock], param: str) -> str:
    """The text of a string or of text blocks."""
    if isinstance(content, str):
        return content
    for block in content:
        if block.type != "text":
            raise InvalidRequestError(f"Only text blocks are allowed in `{param}`", param=param)
    return "".join(block.text or "" for block in content)


def _turn(message: MessageParam) -> list[dict[str, Any]]:
    """One Anthropic message as template messages: a user turn's `tool_result` blocks become
    `tool` messages (in place), an assistant turn's `tool_use` blocks its `tool_calls` and its
    `thinking` blocks its `reasoning_content`."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "assistant":
        return [_assistant(message.content)]
    turns: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "tool_result":
            if parts:
                turns.append({"role": "user", "content": _content(parts)})
                parts = []
            turns.append(_tool_result(block))
        elif block.type == "text":
            parts.append({"type": "text", "text": block.text or ""})
        elif block.type == "image":
            parts.append({"type": "image"})  # its image rides on the request (`image_refs`)
        else:
            _unsupported(block)
    if parts or not turns:
        turns.append({"role": "user", "content": _content(parts)})
    return turns


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text parts joined; with an image among them, the parts in order."""
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def image_refs(body: CountTokensRequest) -> list[ImageRef]:
    """The `image` blocks of `body`'s messages, in order (user messages only): a `base64`
    source's data, or a `url` source under the daemon's URL policy."""
    refs = []
    for i, message in enumerate(body.messages):
        if isinstance(message.content, str):
            continue
        for j, block in enumerate(message.content):
            if block.type != "image":
                continue
            where = f"messages[{i}].content[{j}]"
            source = block.source
            if message.role != "user":
                raise InvalidRequestError(
                    f"The image at {where} is in a `{message.role}` message; images are taken "
                    "in user messages only",
                    param=where,
                )
            if source is not None and source.type == "base64" and source.data:
                refs.append(ImageRef(where=where, source=source.data, kind="base64"))
            elif source is not None and source.type == "url" and source.url:
                refs.append(ImageRef(where=where, source=source.url))
            else:
                raise InvalidRequestError(
                    f"The image at {where} needs a `source` of type `base64` (with `data`) or "
                    "`url` (with `url`)",
                    param=where,
                )
    return refs


def _assistant(blocks: list[ContentBlock]) -> dict[str, Any]:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if block.type == "text":
            texts.append(block.text or "")
        elif block.type == "thinking":
            reasoning.append(block.thinking or "")
        elif block.type == "tool_use":
            if not block.name:
                raise InvalidRequestError("A `tool_use` block needs a `name`", param="messages")
            function = {"name": block.name, "arguments": block.input or {}}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif block.type != "redacted_thinking":
            _unsupported(block)
    item: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if reasoning:
        item["reasoning_content"] = "".join(reasoning)
    if calls:
        item["tool_calls"] = calls
    return item


def _tool_result(block: ContentBlock) -> dict[str, Any]:
    content = block.content
    if content is None or isinstance(content, str):
        text = content or ""
    else:
        text = "".join(_result_text(part) for part in content)
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _result_text(part: ResultPart) -> str:
    if part.type != "text":
        raise InvalidRequestError(
            f"`tool_result` content of type `{part.type}` is not supported by this model",
            param="messages",
        )
    return part.text or ""


def _unsupported(block: ContentBlock) -> None:
    raise InvalidRequestError(
        f"Content blocks of type `{block.type}` are not supported here", param="messages"
    )


def _tools(body: CountTokensRequest) -> list[dict[str, Any]] | None:
    """The client tools the template offers, as OpenAI function tools: `none` offers none, a
    named `tool` only that one, `auto` and `any` all (`any` and `tool` also force a call)."""
    choice = body.tool_choice
    tools: list[dict[str, Any]] = [
        {"type": "function", "function": _function(tool.name, tool.description, schema)}
        for tool in body.tools or []
        if (schema := tool.input_schema) is not None
    ]
    if not tools or (choice is not None and choice.type == "none"):
        return None
    if choice is not None and choice.type == "tool":
        chosen = [tool for tool in tools if tool["function"]["name"] == choice.name]
        if not chosen:
            raise InvalidRequestError(
                f"`tool_choice` names `{choice.name}`, which is not in `tools`",
                param="tool_choice",
            )
        return chosen
    return tools


def _function(name: str, description: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": description or "", "parameters": schema}
