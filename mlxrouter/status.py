"""What the daemon says about itself, as typed values: model cards, pool status, health.

One definition per shape: the daemon builds these, the API returns them as they are (OpenAPI
shows the same Structs), and the CLI decodes `/admin/pool` into them with msgspec. The
builders are pure functions over a registry snapshot and the pool's entries. No HTTP here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from typing import Literal

import msgspec

from .config import ModelSettings, inline_template
from .registry import Registry, RegistryEntry, Source
from .vision_types import vision_installed


class ErrorBody(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    """The error envelope of every answer that fails (OpenAI's shape)."""

    error: ErrorBody


class ModelCard(msgspec.Struct, kw_only=True):
    """One `/v1/models` entry: OpenAI's fields, then mlxrouter's."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # --- mlxrouter extensions ---
    #: "remote": served by the upstream named in `upstream` (`upstreams:` in the config)
    kind: Literal["model", "adapter", "remote"]
    base: str | None
    loaded: bool
    context_length: int | None
    #: the same number under the name vLLM-aware pickers read
    max_model_len: int | None
    #: "completion" always; "chat" with a chat template; "tools" when the template renders
    #: tools; "thinking" when it has thinking markers or the `enable_thinking` switch
    capabilities: list[str]
    quantization_bits: int | None
    size_bytes: int
    #: remote ids: the upstream serving it (its config `name`)
    upstream: str | None = None
    #: false while its upstream is down, for an encoder architecture the engine cannot run, and
    #: for a vision model without the `mlxrouter[vision]` extra (mlx-vlm) installed
    available: bool = True
    #: config.json's `model_type` (Ollama's `general.architecture`); None when unknown
    architecture: str | None = None
    #: "embedding": served by `/v1/embeddings` and `/api/embed` only; "vision": chat that also
    #: takes images; "chat": everything else
    type: Literal["chat", "embedding", "vision"] = "chat"
    #: embedding models: the vector's length, and the most tokens one input may have
    dimensions: int | None = None
    max_input_tokens: int | None = None
    #: embedding models trained for shorter vectors: a request's `dimensions` may be lower
    matryoshka: bool = False
    #: where the registry found it: a `models:` entry with a `path` ("config"), a folder of
    #: `model_dirs` ("model_dir"), the Hugging Face cache ("hf_cache") or an upstream ("remote")
    source: Source | None = None
    #: "gguf" when the folder was converted from a GGUF file (`mlxrouter import-gguf`)
    converted_from: Literal["gguf"] | None = None
    #: served across machines by a worker group (a `distributed:` entry)
    distributed: bool = False
    #: an alias (a `models:` entry with `model:`): the id it stands for, which `/admin/pool`
    #: lists; else None
    alias_of: str | None = None


class ModelDetail(ModelCard, kw_only=True):
    """`GET /v1/models/{id}`: the card, plus the request defaults in effect for this id (its
    `models:` entry over `defaults:`; null: not set, the request's or the built-in default
    applies; a `chat_template` from a file is shown as `(file)`)."""

    settings: ModelSettings


def shown_settings(settings: ModelSettings) -> ModelSettings:
    """Settings as `GET /v1/models/{id}` shows them: a chat template read from a file is
    shown as `(file)`, never its path (answers carry no filesystem paths)."""
    template = settings.chat_template
    if template is None or inline_template(template):
        return settings
    return msgspec.structs.replace(settings, chat_template="(file)")


class WorkerGroupStatus(msgspec.Struct, kw_only=True):
    """A distributed entry's worker group (`mlx.launch` running `mlx_lm.server`)."""

    state: Literal["starting", "ready", "failed", "restarting"]
    #: why it failed (its exit code), while it is being restarted
    reason: str | None = None
    #: the launcher's pid, also the process group of the ranks on this machine
    pid: int | None = None
    #: rank 0's private loopback port
    port: int | None = None
    #: restarts after it exited by itself
    restarts: int = 0


class PoolEntryStatus(msgspec.Struct, kw_only=True):
    id: str
    kind: Literal["model", "adapter"]
    #: what the entry serves (its registry entry's type)
    type: Literal["chat", "embedding", "vision"] = "chat"
    base: str | None
    state: Literal["loading", "loaded"]
    bytes: int
    in_flight: int
    #: Unix time of the last lease's end (or the load)
    last_used: float
    pinned: bool
    #: Unix time an idle entry's ttl unloads it; null: never (or busy)
    expires_at: float | None
    load_seconds: float | None
    #: distributed entries: their worker group
    worker: WorkerGroupStatus | None = None


class PoolStatus(msgspec.Struct, kw_only=True):
    """`GET /admin/pool` and `mlxrouter ps`."""

    entries: list[PoolEntryStatus]
    used_bytes: int
    max_models: int
    max_bytes: int | None
    #: seconds; null: idle entries stay until evicted
    idle_ttl: float | None
    queue_depth: int
    loads: int
    evictions: int
    # MLX's own figures beside the pool's estimate (`used_bytes`): a gap between them is memory
    # the pool does not govern. Defaults keep answers of older daemons decodable.
    #: bytes MLX's live arrays hold (weights, KV caches, activations)
    mlx_active_bytes: int = 0
    #: freed buffers MLX keeps for reuse (`pool.mlx_cache_bytes` bounds them)
    mlx_cache_bytes: int = 0
    #: the most active memory since the daemon started
    mlx_peak_bytes: int = 0
    #: `pool.mlx_cache_bytes`; null: MLX's default
    mlx_cache_limit: int | None = None
    #: the machine's physical memory; null where the system does not say
    machine_memory_bytes: int | None = None


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok", "degraded"]
    reasons: list[str]
    models: int
    loaded: list[str]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def model_card(
    registry: Registry,
    model_id: str,
    entry: RegistryEntry,
    loaded: Collection[str],
    context_cap: int | None = None,
) -> ModelCard:
    """`model_id` may be an alias of `entry`. An adapter answers like its base: its context,
    capabilities and quantisation are the base's; `context_cap` (its `context_length`
    setting) lowers the context shown."""
    found = entry.found
    model = (
        registry.entries.get(entry.base or "", entry).found if entry.kind == "adapter" else found
    )
    remote = entry.remote
    context = model.context_length
    if context_cap is not None:
        context = context_cap if context is None else min(context, context_cap)
    return ModelCard(
        id=model_id,
        created=found.created,
        owned_by=found.owned_by,
        kind="remote" if remote else "adapter" if entry.kind == "adapter" else "model",
        base=entry.base,
        loaded=remote.loaded if remote else entry.id in loaded,
        context_length=context,
        max_model_len=context,
        capabilities=list(model.capabilities),
        quantization_bits=model.quantization_bits,
        size_bytes=found.size_bytes,
        upstream=remote.upstream if remote else None,
        available=remote.available
        if remote
        else model.unsupported is None and (model.model_type != "vision" or vision_installed()),
        architecture=model.architecture,
        type=model.model_type,
        dimensions=model.dimensions,
        max_input_tokens=model.max_input_tokens,
        matryoshka=model.matryoshka,
        source=entry.source,
        converted_from=found.converted_from,  # the entry's own folder (an adapter's: never)
        alias_of=entry.id if model_id != entry.id else None,
        distributed=entry.options.distributed is not None,
    )


def model_cards(
    registry: Registry,
    loaded: Collection[str],
    context_cap: Callable[[str], int | None] = lambda _: None,
) -> list[ModelCard]:
    """Every id and alias of one snapshot, sorted by id; `context_cap` gives an id's
    `context_length` setting."""
    cards = [model_card(registry, e.id, e, loaded, context_cap(e.id)) for e in registry]
    cards += [
        model_card(registry, a, registry.resolve(a), loaded, context_cap(a))
        for a in registry.aliases
    ]
    return sorted(cards, key=lambda card: card.id)


def seconds_or_none(seconds: float) -> float | None:
    """JSON has no infinity: "forever" is written as null."""
    return None if math.isinf(seconds) else seconds


def health(reasons: Iterable[str], models: int, loaded: Iterable[str]) -> Health:
    reasons = list(reasons)
    return Health(
        status="degraded" if reasons else "ok",
        reasons=reasons,
        models=models,
        loaded=list(loaded),
    )


class LoadAnswer(msgspec.Struct, kw_only=True):
    """`POST /admin/load`: the pool key now loaded, and the pool after it."""

    loaded: str
    pool: PoolStatus


class UnloadAnswer(msgspec.Struct, kw_only=True):
    """`POST /admin/unload`: whether it was loaded, and the pool after it."""

    unloaded: bool
    pool: PoolStatus


class ActivityRecord(msgspec.Struct, kw_only=True):
    """One finished request in the activity ring (`GET /admin/activity`, the `request.finished`
    event). `prompt` is only set when `log_prompts` is on."""

    #: the same as its `request.started` event's
    id: int
    time: float
    surface: Literal["openai", "anthropic", "responses", "ollama", "embeddings"]
    kind: str
    model: str
    status: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    #: seconds from the request's arrival to its first token; None when none came
    ttft: float | None = None
    #: completion tokens per second of generation; None when nothing was generated
    tokens_per_second: float | None = None
    latency: float
    error: str | None = None
    prompt: str | None = None


class ActivityAnswer(msgspec.Struct, kw_only=True):
    """The last requests, oldest first (at most `ui.history` of them)."""

    requests: list[ActivityRecord]
    #: events not delivered to `/admin/events` subscribers that fell behind, since start
    dropped_events: int
    #: `ui.history`: the most requests the ring keeps (a dashboard keeps as many rows)
    history: int = 0
