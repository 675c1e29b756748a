"""Ollama API shapes as msgspec Structs: the requests of `/api/chat`, `/api/generate` and
`/api/show`, and every answer of `/api/*`.

Unknown fields are ignored (Ollama clients send many); the fields that are present are
validated with the same ranges as the OpenAI surface. Answers leave out what is unset, as
Ollama does (`omit_defaults`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..schemas import Penalty, Probability, Stop, Temperature

Think = bool | Literal["low", "medium", "high"]
#: `"json"` (any JSON object) or a JSON schema
Format = Literal["json", ""] | dict[str, Any]
KeepAlive = str | float


class Options(msgspec.Struct, kw_only=True):
    """The `options` Ollama maps to sampling; the others (`num_ctx`, `num_gpu`, ...) are
    about llama.cpp's runtime and are ignored."""

    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    min_p: Probability | None = None
    seed: int | None = None
    #: -1 (no limit) and -2 (fill the context) leave the daemon's limit in place
    num_predict: Annotated[int, msgspec.Meta(ge=-2)] | None = None
    stop: Stop | None = None
    repeat_penalty: Annotated[float, msgspec.Meta(gt=0, le=10)] | None = None
    repeat_last_n: Annotated[int, msgspec.Meta(ge=-1, le=4096)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None


class OllamaFunctionCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    #: an object, not a JSON string as in OpenAI
    arguments: dict[str, Any] = {}


class OllamaToolCall(msgspec.Struct, kw_only=True, omit_defaults=True):
    function: OllamaFunctionCall


class OllamaMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    #: the tool a `tool` message answers
    tool_name: str | None = None


class _Generation(msgspec.Struct, kw_only=True):
    model: str
    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None


class ChatRequest(_Generation, kw_only=True):
    messages: list[OllamaMessage] = []
    tools: list[dict[str, Any]] | None = None


class GenerateRequest(_Generation, kw_only=True):
    prompt: str = ""
    system: str | None = None
    #: the prompt as it is, no chat template
    raw: bool = False
    images: list[str] | None = None
    #: refused when present: the model's own template is used
    template: str | None = None
    suffix: str | None = None
    context: list[int] | None = None


class ShowRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    #: the older name of `model`
    name: str | None = None
    verbose: bool = False


# ---- answers ----------------------------------------------------------------------------------


class VersionAnswer(msgspec.Struct, kw_only=True):
    version: str


class ModelDetails(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What Ollama knows of a model's files; left out where the card does not say."""

    parent_model: str
    #: "safetensors": MLX weights
    format: str
    family: str = ""
    families: list[str] = []
    parameter_size: str = ""
    #: "Q4", "Q8", ... for MLX-quantised weights
    quantization_level: str = ""


class TagsModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class TagsAnswer(msgspec.Struct, kw_only=True):
    models: list[TagsModel]


class ShowAnswer(msgspec.Struct, kw_only=True):
    modelfile: str
    parameters: str
    template: str
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class RunningModel(msgspec.Struct, kw_only=True):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int | None = None


class RunningAnswer(msgspec.Struct, kw_only=True):
    models: list[RunningModel]


class _Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What every chat and generate answer (and streamed line) starts with; the counts and
    durations (nanoseconds) are on the last one, `done: true`."""

    model: str
    created_at: str
    done: bool
    #: "stop", "length"; "load" / "unload" for a request with nothing to generate
    done_reason: str | None = None
    #: from the request's arrival to its last line
    total_duration: int | None = None
    #: the model's load, when this request loaded it
    load_duration: int | None = None
    prompt_eval_count: int = 0
    #: from the lease to the first token
    prompt_eval_duration: int | None = None
    eval_count: int = 0
    eval_duration: int | None = None


class ReplyMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The assistant's message in a chat answer (or a streamed piece of it)."""

    role: Literal["assistant"]
    content: str
    thinking: str | None = None
    tool_calls: list[OllamaToolCall] | None = None


class ChatReply(_Reply, kw_only=True, omit_defaults=True):
    message: ReplyMessage


class GenerateReply(_Reply, kw_only=True, omit_defaults=True):
    response: str
    thinking: str | None = None


class EmbedRequest(msgspec.Struct, kw_only=True):
    """`POST /api/embed`."""

    model: str
    #: a string or a list of strings
    input: str | list[Any]
    #: cut inputs longer than the model's limit (Ollama's default) instead of refusing them
    truncate: bool = True
    dimensions: int | None = None
    keep_alive: str | float | None = None
    options: dict[str, Any] | None = None


class EmbedAnswer(msgspec.Struct, kw_only=True):
    model: str
    embeddings: list[list[float]]
    #: nanoseconds, as Ollama counts them
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class LegacyEmbeddingsRequest(msgspec.Struct, kw_only=True):
    """`POST /api/embeddings`, the older form: one `prompt`."""

    model: str
    prompt: str
    keep_alive: str | float | None = None
    options: dict[str, Any] | None = None


class LegacyEmbeddingsAnswer(msgspec.Struct, kw_only=True):
    embedding: list[float]
