"""Ollama requests -> engine requests. An Ollama chat or generate request is restated in the
OpenAI surface's request Structs and built by `api.convert`, so messages, tools, `think`,
constrained decoding and the model's request defaults follow one set of rules; what only
Ollama has (`options`, `format`, `raw`, `tool_name`, arguments as objects, `:latest`) is
translated here. Pure functions over plain data."""

from __future__ import annotations

import json
from typing import Any

from ...config import ModelSettings
from ...engine import GenerationRequest
from ...errors import InvalidRequestError
from ...images import ImageRef
from .. import convert
from ..schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    ImageUrl,
    ToolCallFunction,
)
from ..schemas import ToolCall as OpenAIToolCall
from .schemas import ChatRequest, Format, GenerateRequest, OllamaMessage, Options

LATEST = ":latest"


def model_id(name: str) -> str:
    """A registry id from an Ollama model name: `:latest`, the tag Ollama assumes, is dropped."""
    return name.removesuffix(LATEST)


def sampling_fields(options: Options | None) -> dict[str, Any]:
    """`options` as the OpenAI surface's sampling fields."""
    if options is None:
        return {}
    fields: dict[str, Any] = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "min_p": options.min_p,
        "seed": options.seed,
        "stop": options.stop,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
    }
    if options.num_predict is not None and options.num_predict > 0:
        fields["max_tokens"] = options.num_predict
    elif options.num_predict == 0:
        raise InvalidRequestError("`options.num_predict` must not be 0", param="options")
    if options.repeat_penalty is not None and options.repeat_penalty != 1.0:
        fields["repetition_penalty"] = options.repeat_penalty
    if options.repeat_last_n is not None and options.repeat_last_n > 0:
        fields["repetition_context_size"] = options.repeat_last_n
    return {key: value for key, value in fields.items() if value is not None}


def response_format(format_: Format | None) -> dict[str, Any] | None:
    """Ollama's `format` as an OpenAI `response_format`: "json" is any JSON object, an object
    is the JSON schema the answer must satisfy."""
    if not format_:
        return None
    if format_ == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "format", "schema": format_}}


def _with_images(text: str | None, images: list[str] | None) -> str | list[ContentPart] | None:
    """A message's content with its images first, then its text (as Ollama places them); the
    images themselves come from `image_refs`, in the same order."""
    if not images:
        return text
    parts = [ContentPart(type="image_url", image_url=ImageUrl(url="")) for _ in images]
    return [*parts, ContentPart(type="text", text=text or "")]


def image_refs(body: ChatRequest | GenerateRequest) -> list[ImageRef]:
    """The request's images (base64), in order: each user message's `images` for a chat,
    the request's `images` for a generate."""
    if isinstance(body, GenerateRequest):
        if body.images and body.raw:
            raise InvalidRequestError("`images` need the chat template, not `raw`", param="images")
        images = [(f"images[{j}]", data) for j, data in enumerate(body.images or [])]
    else:
        images = []
        for i, message in enumerate(body.messages):
            if message.images and message.role != "user":
                raise InvalidRequestError(
                    f"The images at messages[{i}].images are in a `{message.role}` message; "
                    "images are taken in user messages only",
                    param=f"messages[{i}].images",
                )
            images += [
                (f"messages[{i}].images[{j}]", d) for j, d in enumerate(message.images or [])
            ]
    return [ImageRef(where=where, source=data, kind="base64") for where, data in images]


def _message(message: OllamaMessage) -> ChatMessage:
    calls = [
        OpenAIToolCall(
            function=ToolCallFunction(
                name=call.function.name, arguments=json.dumps(call.function.arguments)
            )
        )
        for call in message.tool_calls or ()
    ]
    return ChatMessage(
        role=message.role,
        content=_with_images(message.content, message.images),
        name=message.tool_name if message.role == "tool" else None,
        tool_calls=calls or None,
        reasoning_content=message.thinking or None,
    )


def chat_request(
    body: ChatRequest, settings: ModelSettings, *, default_max_tokens: int
) -> list[GenerationRequest]:
    """One engine request; none when `messages` is empty (Ollama's way to load a model)."""
    if not body.messages:
        return []
    openai = ChatCompletionRequest(
        model=body.model,
        messages=[_message(message) for message in body.messages],
        tools=body.tools or None,
        response_format=response_format(body.format),
        think=body.think,
        **sampling_fields(body.options),
    )
    return [convert.chat_request(openai, settings, default_max_tokens=default_max_tokens)]


def generate_request(
    body: GenerateRequest, settings: ModelSettings, *, default_max_tokens: int
) -> list[GenerationRequest]:
    """One engine request: the prompt (and `system`) through the chat template, or as it is
    with `raw`; none when the prompt is empty (Ollama's way to load a model). With `images`,
    the chat-shaped request is one user message of the images, then the prompt."""
    for name in ("template", "suffix", "context"):
        if getattr(body, name):
            raise InvalidRequestError(f"`{name}` is not supported", param=name)
    if not body.prompt and not body.images:
        return []
    sampling = sampling_fields(body.options)
    if body.raw:
        text = CompletionRequest(model=body.model, prompt=body.prompt, **sampling)
        return convert.completion_requests(text, settings, default_max_tokens=default_max_tokens)
    messages = [ChatMessage(role="user", content=_with_images(body.prompt, body.images))]
    if body.system:
        messages.insert(0, ChatMessage(role="system", content=body.system))
    chat = ChatCompletionRequest(
        model=body.model,
        messages=messages,
        response_format=response_format(body.format),
        think=body.think,
        **sampling,
    )
    return [convert.chat_request(chat, settings, default_max_tokens=default_max_tokens)]
