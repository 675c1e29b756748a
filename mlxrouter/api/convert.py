"""OpenAI requests -> engine requests (`GenerationRequest`): messages as templates expect them,
prompts, sampling, stop strings, tools, `response_format`, `keep_alive`.

Pure functions over plain data; the routes call them at the boundary. The way back, engine
events -> OpenAI answers, is `answers.py`."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from ..config import ModelSettings
from ..engine import GenerationRequest, SamplingParams
from ..errors import InvalidRequestError
from ..images import ImageRef
from ..units import Duration
from .schemas import ChatCompletionRequest, ChatMessage, CompletionRequest

T = TypeVar("T")


def _first(*values: T | None) -> T:
    """The first value that is set: the request's, then the model's settings, then the
    default (last, never None)."""
    return next(v for v in values if v is not None)


def _sampling(
    body: ChatCompletionRequest | CompletionRequest, settings: ModelSettings
) -> SamplingParams:
    bias: dict[int, float] | None = None
    if body.logit_bias:
        try:
            bias = {int(k): float(v) for k, v in body.logit_bias.items()}
        except ValueError:
            raise InvalidRequestError(
                "logit_bias keys must be token ids", param="logit_bias"
            ) from None
    return SamplingParams(
        temperature=_first(body.temperature, settings.temperature, 1.0),
        top_p=_first(body.top_p, settings.top_p, 1.0),
        top_k=_first(body.top_k, settings.top_k, 0),
        min_p=_first(body.min_p, settings.min_p, 0.0),
        repetition_penalty=body.repetition_penalty,
        repetition_context_size=body.repetition_context_size or 20,
        presence_penalty=body.presence_penalty or None,
        presence_context_size=body.presence_context_size or 20,
        frequency_penalty=body.frequency_penalty or None,
        frequency_context_size=body.frequency_context_size or 20,
        xtc_probability=_first(body.xtc_probability, settings.xtc_probability, 0.0),
        xtc_threshold=_first(body.xtc_threshold, settings.xtc_threshold, 0.1),
        logit_bias=bias,
        seed=body.seed,
    )


# OpenAI's json_object mode: any JSON object.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def schema_of(response_format: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a `response_format` asks for; None for plain text."""
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return ANY_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequestError(
                "`response_format.json_schema.schema` must be a JSON schema object",
                param="response_format",
            )
        return schema
    raise InvalidRequestError(
        "`response_format.type` must be text, json_object or json_schema", param="response_format"
    )


def keep_alive(value: str | float | None) -> Duration | None:
    """Ollama's keep_alive: a duration ("5m", "30s") or seconds; 0 unloads once idle,
    negative (or "forever") keeps the entry loaded until unloaded."""
    if value is None:
        return None
    try:
        return Duration.parse(value)
    except (ValueError, TypeError):
        raise InvalidRequestError(
            "`keep_alive` must be seconds or a duration such as '5m'", param="keep_alive"
        ) from None


def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    return tuple(s for s in items if s)


def _message_content(content: Any) -> str | list[dict[str, Any]]:
    """A message's content. No content (an assistant turn that only calls tools, echoed back by
    SDKs as `null` or left out) renders as empty text, as mlx_lm.server does: templates read
    `message['content']` and fail on a missing or null one. Text parts are joined; with an
    image among them the content is the parts in order, `{"type": "image"}` for each image
    (the shape vision processors' templates take; the images themselves ride on the request)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part.type == "text":
            parts.append({"type": "text", "text": part.text or ""})
        elif part.type == "image_url":
            parts.append({"type": "image"})
        else:
            raise InvalidRequestError(
                f"Content parts of type `{part.type}` are not supported", param="messages"
            )
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def image_refs(messages: list[ChatMessage], prefix: str = "messages") -> list[ImageRef]:
    """The images of a chat request, in the order of their `{"type": "image"}` parts;
    `prefix` names the messages' field in errors. Images are taken in user messages only."""
    refs = []
    for i, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        for j, part in enumerate(message.content):
            if part.type != "image_url":
                continue
            where = f"{prefix}[{i}].content[{j}]"
            if message.role != "user":
                raise InvalidRequestError(
                    f"The image at {where} is in a `{message.role}` message; images are taken "
                    "in user messages only",
                    param=where,
                )
            if part.image_url is None or not part.image_url.url:
                raise InvalidRequestError(
                    f"The `image_url` part at {where} needs `image_url.url`", param=where
                )
            refs.append(ImageRef(where=where, source=part.image_url.url))
    return refs


def chat_request(
    body: ChatCompletionRequest, settings: ModelSettings, *, default_max_tokens: int
) -> GenerationRequest:
    """`settings` are the model's request defaults (`models:` / `defaults:`), for what the
    request leaves unset."""
    if body.chat_template is not None:
        raise InvalidRequestError(
            "A request cannot supply its own chat template; the model's is used",
            param="chat_template",
        )
    messages = [_template_message(message) for message in body.messages]
    if settings.system_prompt and not any(m["role"] in ("system", "developer") for m in messages):
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    top: int | None = None
    if body.logprobs is True:
        top = body.top_logprobs or 0
    elif isinstance(body.logprobs, int) and not isinstance(body.logprobs, bool):
        top = body.logprobs
    elif body.top_logprobs:
        raise InvalidRequestError("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
    return GenerationRequest(
        messages=messages,
        role_mapping=body.role_mapping,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        default_max_tokens=_first(settings.max_tokens, default_max_tokens),
        stop=_stop(body.stop),
        sampling=_sampling(body, settings),
        logprobs=top,
        tools=_tools(body.tools, body.tool_choice),
        tool_call_required=bool(body.tools)
        and (body.tool_choice == "required" or isinstance(body.tool_choice, dict)),
        json_schema=schema_of(body.response_format) if body.response_format else None,
        chat_template_kwargs={**settings.chat_template_kwargs, **template_kwargs(body)},
        draft_model=body.draft_model,
        num_draft_tokens=body.num_draft_tokens,
    )


def template_kwargs(body: ChatCompletionRequest) -> dict[str, Any]:
    """The chat template's variables: `chat_template_kwargs` as given, over the common
    thinking switches mapped onto it (`reasoning_effort`, Ollama's `think`, then top-level
    `enable_thinking`, each later one winning): "none" or `false` is `enable_thinking: false`,
    an effort is passed as `reasoning_effort` for templates that read it."""
    kwargs: dict[str, Any] = {}
    for effort in (body.reasoning_effort, body.think):
        if effort == "none" or effort is False:
            kwargs["enable_thinking"] = False
        elif effort is True:
            kwargs["enable_thinking"] = True
        elif effort is not None:
            kwargs["reasoning_effort"] = effort
    if body.enable_thinking is not None:
        kwargs["enable_thinking"] = body.enable_thinking
    return {**kwargs, **(body.chat_template_kwargs or {})}


def _template_message(message: ChatMessage) -> dict[str, Any]:
    """An OpenAI message as chat templates expect it. Tool-call arguments arrive as JSON
    strings but templates render them with `tojson`, so they are decoded first."""
    item: dict[str, Any] = {"role": message.role, "content": _message_content(message.content)}
    if message.name:
        item["name"] = message.name
    if message.tool_call_id:
        item["tool_call_id"] = message.tool_call_id
    reasoning = message.reasoning_content or message.reasoning
    if reasoning:  # kept for templates that render it (the engine drops it for the others)
        item["reasoning_content"] = reasoning
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments or "{}")
            except ValueError:
                raise InvalidRequestError(
                    "tool call arguments must be a JSON object encoded as a string",
                    param="messages",
                ) from None
            function = {"name": call.function.name, "arguments": arguments}
            calls.append({"id": call.id, "type": call.type, "function": function})
        item["tool_calls"] = calls
    return item


def _tools(
    tools: list[dict[str, Any]] | None, choice: str | dict[str, Any] | None
) -> list[dict[str, Any]] | None:
    """The tools the template should offer: `none` offers none; a named function offers only
    that one; `auto` and `required` offer all. (`required` and a named function also force a
    call, in the engine.)"""
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in tools if (t.get("function") or {}).get("name") == name]
        if not chosen:
            raise InvalidRequestError(
                f"`tool_choice` names `{name}`, which is not in `tools`", param="tool_choice"
            )
        return chosen
    if choice not in (None, "auto", "required"):
        raise InvalidRequestError(
            "`tool_choice` must be none, auto, required or a named function", param="tool_choice"
        )
    return tools


def completion_requests(
    body: CompletionRequest, settings: ModelSettings, *, default_max_tokens: int
) -> list[GenerationRequest]:
    """One engine request per prompt: OpenAI's `prompt` is a string, a list of strings, a list
    of token ids, or a list of token-id lists; choice `i` answers prompt `i`."""
    if body.echo or body.suffix:
        raise InvalidRequestError(
            "`echo` and `suffix` are not supported", param="echo" if body.echo else "suffix"
        )
    sampling = _sampling(body, settings)
    stop = _stop(body.stop)
    return [
        GenerationRequest(
            prompt=prompt,
            max_tokens=body.max_tokens,
            default_max_tokens=_first(settings.max_tokens, default_max_tokens),
            stop=stop,
            sampling=sampling,
            logprobs=body.logprobs,
            draft_model=body.draft_model,
            num_draft_tokens=body.num_draft_tokens,
        )
        for prompt in _prompts(body.prompt)
    ]


def _prompts(prompt: str | list[str | int | list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(item, int) for item in prompt):
        return [[item for item in prompt if isinstance(item, int)]]
    if all(isinstance(item, str) for item in prompt):
        return [item for item in prompt if isinstance(item, str)]
    if all(isinstance(item, list) and item for item in prompt):
        return [item for item in prompt if isinstance(item, list)]
    raise InvalidRequestError(
        "`prompt` must be a string, a list of strings, a list of token ids or a list of "
        "non-empty token-id lists",
        param="prompt",
    )
