"""The engine's vocabulary, shared with the pool, the daemon and the API: what to load, what a
loaded model is, what a request asks for and the events its answer streams back.

Plain frozen dataclasses, safe on any thread; this module imports no MLX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to load: a model folder, optionally with a LoRA adapter folder applied."""

    key: str
    model_path: Path
    adapter_path: Path | None = None
    trust_remote_code: bool = False
    #: adapters: the pool key of the loaded base whose arrays the adapter shares
    base_key: str | None = None
    #: an embedding model: loaded as an encoder (`engine.embedding`), never for generation
    embedding: bool = False
    #: a vision-language model: loaded and run with mlx-vlm (`engine.vision`)
    vision: bool = False
    #: the weight files' fingerprint (discovery's): prompt caches on disk are kept per
    #: fingerprint, so changed weights never reuse old caches; "" keeps none on disk
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Plain facts about a loaded model, safe to read on any thread."""

    nbytes: int
    context_length: int | None
    vocab_size: int
    has_chat_template: bool
    load_seconds: float


#: mlx_lm's: KV caches are quantized once a sequence has this many tokens
DEFAULT_QUANTIZED_KV_START = 5000
#: mlx_lm.server's: tokens a draft model drafts per step
DEFAULT_DRAFT_TOKENS = 3


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """How the engine runs a model for one request: the owner's per-model settings (never a
    request's own fields), resolved by the daemon when it leases the model."""

    #: the chat template's text, used instead of the model's own
    chat_template: str | None = None
    #: a context length below the model's own (the smaller one applies)
    context_length: int | None = None
    #: KV-cache quantization (mlx_lm's quantized caches) from `quantized_kv_start` tokens on;
    #: such a request runs as a solo sequence (`engine.solo`)
    kv_bits: int | None = None
    kv_group_size: int = 64
    quantized_kv_start: int = DEFAULT_QUANTIZED_KV_START
    #: speculative decoding: the draft model's engine key (leased beside the model) and how
    #: many tokens it drafts per step; such a request runs as a solo sequence
    draft: str | None = None
    num_draft_tokens: int = DEFAULT_DRAFT_TOKENS


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    repetition_context_size: int = 20
    presence_penalty: float | None = None
    presence_context_size: int = 20
    frequency_penalty: float | None = None
    frequency_context_size: int = 20
    #: XTC: the chance per token of removing the likely tokens above the threshold but one
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    logit_bias: dict[int, float] | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class ImageInput:
    """One image of a chat request, checked and decoded at the API boundary (`images.py`);
    its place in the conversation is an `{"type": "image"}` part of `messages`, in order."""

    #: the image file's bytes as received (PNG, JPEG, ...), already verified to decode
    data: bytes
    #: sha256 of `data`, hex: the prompt cache keys the image by it
    digest: str
    #: where the client put it, for errors: `messages[0].content[1]`, `images[0]`, ...
    where: str
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A request in engine terms. Exactly one of `messages` (chat) or `prompt` (text) is set."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    role_mapping: dict[str, str] | None = None
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    default_max_tokens: int = 2048
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: None: no logprobs; N >= 0: the chosen token's logprob plus the N most likely
    logprobs: int | None = None
    #: a JSON schema the answer must satisfy (response_format json_object / json_schema)
    json_schema: dict[str, Any] | None = None
    #: the answer must be a call to one of `tools` (tool_choice `required` or a named function);
    #: forced by constrained decoding for models whose tool calls are `<tool_call>` JSON
    tool_call_required: bool = False
    #: extra variables for the chat template (`enable_thinking`, `reasoning_effort`, ...)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    #: a `max_tokens` beyond the room the context leaves is capped to that room, not refused
    #: (Anthropic's surface: Claude Code always asks for 32000)
    cap_max_tokens: bool = False
    #: speculative decoding the request asks for (a registry id; the model's settings
    #: otherwise): the daemon leases the draft and names it in `options`
    draft_model: str | None = None
    num_draft_tokens: int | None = None
    #: the model's run options, filled in by the daemon from its settings (`Daemon.lease`)
    options: ModelOptions = field(default_factory=ModelOptions)
    #: the images of `messages`, in the order of their `{"type": "image"}` parts (vision models)
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True, slots=True)
class Started:
    """First event of every stream: the prompt was accepted and is being processed."""

    prompt_tokens: int
    #: prompt tokens whose KV cache came from an earlier request (as on `Finished`)
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One parsed tool call; `arguments` is a JSON object encoded as a string, as in OpenAI."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """What one step adds to an answer: its content `text`, the `reasoning` of a thinking
    model (the text between its thinking markers, chat requests only), logprobs, tool calls."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str  # "stop", "length" or "tool_calls"
    prompt_tokens: int
    completion_tokens: int
    #: prompt tokens whose KV cache came from an earlier request (prefix reuse)
    cached_tokens: int = 0
    #: completion tokens spent reasoning (thinking markers included)
    reasoning_tokens: int = 0
    #: the stop string that ended the answer (finish_reason "stop"), None for any other end
    stop_sequence: str | None = None
    #: seconds from the prompt's acceptance to its first generated token (queue and prefill),
    #: then from that token to the last, timed on the engine thread (Ollama's durations)
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Inputs to embed, in engine terms: texts or token-id lists (not both kinds needed)."""

    inputs: tuple[str | tuple[int, ...], ...]
    #: cut an input longer than the model's limit to it (Ollama) instead of refusing it
    truncate: bool = False
    #: the surface's name for the inputs, in errors naming one (`input`, `prompt`)
    param: str = "input"
    #: a Matryoshka model's vectors cut to this length and normalised again (None: whole)
    dimensions: int | None = None


@dataclass(frozen=True, slots=True)
class Embedded:
    """An embedding request's answer, before its `Finished`: one vector per input, in order
    (float32, pooled and normalised as the model's configuration says)."""

    vectors: Any  # numpy float32 array of shape (inputs, dimensions)
    prompt_tokens: int


Event = Started | Chunk | Finished | Embedded
