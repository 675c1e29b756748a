"""OpenAI request and response shapes as msgspec Structs.

Request fields follow OpenAI's order; mlxrouter's own extensions come last and are marked.
Unknown fields are tolerated (clients send many) and logged at debug level by the routes.
Ranges are declared here, so out-of-range values fail validation with the field's name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
ContextSize = Annotated[int, msgspec.Meta(ge=1, le=4096)]
#: mlx_lm's XTC takes thresholds up to 0.5 only
XtcThreshold = Annotated[float, msgspec.Meta(ge=0, le=0.5)]
StopList = Annotated[
    list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=16)
]
Stop = Annotated[str, msgspec.Meta(max_length=256)] | StopList
LogitBias = Annotated[
    dict[str, Annotated[float, msgspec.Meta(ge=-100, le=100)]], msgspec.Meta(max_length=1024)
]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ImageUrl(msgspec.Struct, kw_only=True):
    #: a data URL (`data:image/png;base64,...`), or an http(s) URL if the owner allows them
    url: str
    #: OpenAI's resolution hint; accepted, no effect (the model's processor sizes the image)
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(msgspec.Struct, kw_only=True):
    """A message's content part: `text`, or `image_url` (vision models)."""

    type: str
    text: str | None = None
    #: the object OpenAI documents, or the URL alone (as some clients send it)
    image_url: ImageUrl | str | None = None


class ToolCallFunction(msgspec.Struct, kw_only=True):
    name: str
    arguments: str = "{}"


class ToolCall(msgspec.Struct, kw_only=True):
    id: str | None = None
    type: str = "function"
    function: ToolCallFunction


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # --- mlxrouter / mlx_lm.server extensions ---
    #: an earlier assistant turn's reasoning, sent back as the answer gave it (either name);
    #: passed to templates that render `reasoning_content`, dropped for the others
    reasoning_content: str | None = None
    reasoning: str | None = None


class _SamplingFields(msgspec.Struct, kw_only=True):
    """Fields shared by chat and text completions, OpenAI's first, then the extensions."""

    model: str | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    max_tokens: PositiveInt | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    presence_penalty: Penalty | None = None
    seed: int | None = None
    stop: Stop | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    user: str | None = None
    # --- mlxrouter / mlx_lm.server extensions ---
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0, le=10)] | None = None
    repetition_context_size: ContextSize | None = None
    #: tokens the presence / frequency penalty looks back over (mlx_lm's default: 20)
    presence_context_size: ContextSize | None = None
    frequency_context_size: ContextSize | None = None
    #: XTC ("exclude top choices"): with this probability per token, every token above
    #: `xtc_threshold` but the least likely of them is removed (not newline or end-of-text)
    xtc_probability: Probability | None = None
    xtc_threshold: XtcThreshold | None = None
    #: an adapter id from the registry, applied to `model`
    adapters: str | None = None
    #: speculative decoding (as mlx_lm.server): a registry id whose model drafts tokens for
    #: `model` (it must share its tokenizer), and how many it drafts per step; 0 turns the
    #: model's own draft off
    draft_model: str | None = None
    num_draft_tokens: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None
    #: as in Ollama: how long the model stays loaded after this request ("5m", seconds);
    #: 0 unloads it once idle, -1 keeps it loaded until unloaded
    keep_alive: str | float | None = None


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    logprobs: bool | Annotated[int, msgspec.Meta(ge=1, le=10)] | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    max_completion_tokens: PositiveInt | None = None
    #: "none" turns a thinking model's thinking off (`enable_thinking: false` for the template);
    #: other values reach templates that read `reasoning_effort`
    reasoning_effort: ReasoningEffort | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # --- mlxrouter / mlx_lm.server extensions ---
    #: variables for the chat template, e.g. {"enable_thinking": false}
    chat_template_kwargs: dict[str, Any] | None = None
    #: shorthand for chat_template_kwargs.enable_thinking (vLLM, SGLang)
    enable_thinking: bool | None = None
    #: as in Ollama: false turns thinking off, true on; "low"/"medium"/"high" set the effort
    think: bool | Literal["low", "medium", "high"] | None = None
    # --- extension: mlx_lm.server's prompt layout for models without a chat template ---
    role_mapping: dict[str, str] | None = None
    #: refused when present: a template is code the server would run for the client
    chat_template: str | None = None


class CompletionRequest(_SamplingFields, kw_only=True):
    #: a string, a list of strings, a list of token ids, or a list of token-id lists; a list
    #: of N prompts is answered with N choices (checked further in `convert`)
    prompt: (
        Annotated[str, msgspec.Meta(min_length=1)]
        | Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1)] | int | list[int]],
            msgspec.Meta(min_length=1, max_length=64),
        ]
    )
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=10)] | None = None
    echo: bool = False
    suffix: str | None = None


class AdminModelRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /admin/unload`, and the start of `POST /admin/load`'s."""

    model: str
    adapter: str | None = None


class AdminLoadRequest(AdminModelRequest, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /admin/load`."""

    #: true: keep it loaded until unloaded or unpinned; false: unpin it; absent: leave it
    pin: bool | None = None
