"""What a request's `model` (and `adapters`) fields name: a `Target` resolved against one
registry snapshot, and the lease request that loads it; the engine's run options its settings
give (`ModelLease`, a `chat_template` file read per request) and the draft model that drafts
for it. Pure over the registry and config, but for that file and the draft's pool lease."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import Config, ModelSettings, inline_template
from .engine import GenerationRequest, LoadSpec, ModelOptions
from .engine.types import DEFAULT_DRAFT_TOKENS, DEFAULT_QUANTIZED_KV_START
from .errors import (
    ConfigError,
    InvalidRequestError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from .pool import Lease, LeaseRequest, Pool
from .registry import Registry, RegistryEntry
from .vision_types import VISION_EXTRA, vision_installed


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved request: the id asked for, its model, and the adapter applied to it."""

    requested: str
    model: RegistryEntry
    adapter: RegistryEntry | None

    @property
    def key(self) -> str:
        return self.adapter.id if self.adapter else self.model.id

    def lease_request(self, keep_alive: float | None = None) -> LeaseRequest:
        model = self.model
        base = LeaseRequest(
            spec=LoadSpec(
                key=model.id,
                model_path=model.path,
                trust_remote_code=model.options.trust_remote_code,
                embedding=model.found.model_type == "embedding",
                vision=model.found.model_type == "vision",
                fingerprint=model.found.fingerprint,
            ),
            estimated_bytes=local_share(model),
            pinned=model.options.pinned,
            ttl=model.options.ttl,
            keep_alive=None if self.adapter else keep_alive,
        )
        adapter = self.adapter
        if adapter is None:
            return base
        # The adapter shares the base's arrays, so it costs about its own file size.
        return LeaseRequest(
            spec=LoadSpec(
                key=adapter.id,
                model_path=model.path,
                adapter_path=adapter.path,
                trust_remote_code=model.options.trust_remote_code,
                base_key=model.id,
                fingerprint=f"{model.found.fingerprint}+{adapter.found.fingerprint}",
            ),
            estimated_bytes=adapter.found.size_bytes,
            pinned=adapter.options.pinned,
            ttl=adapter.options.ttl,
            base=base,
            keep_alive=keep_alive,
        )

    def settings(self, config: Config) -> ModelSettings:
        """The request defaults that apply: the `models:` entry of the id asked for (an alias),
        then the adapter's, then the model's, then `defaults:`; `default_temperature` last."""
        names = [self.requested, *([self.adapter.id] if self.adapter else []), self.model.id]
        settings = ModelSettings(temperature=config.default_temperature)
        for layer in [config.defaults, *reversed([config.models.get(n) for n in names])]:
            if layer is not None:
                settings = layer.over(settings)
        return settings


@dataclass(frozen=True, slots=True)
class ModelLease(Lease):
    """A request's lease, with the options the engine runs the model with for it."""

    options: ModelOptions = field(default_factory=ModelOptions)

    @staticmethod
    def apply(lease: Lease, request: GenerationRequest) -> GenerationRequest:
        """`request` with the lease's run options (a local model's lease carries them)."""
        return replace(request, options=lease.options) if isinstance(lease, ModelLease) else request


#: what a model of each type is, and the endpoints it serves (in the errors of requests sent to
#: a model of the other type)
_TYPES = {
    "chat": ("a chat model", "chat, completions, messages and responses, not embeddings"),
    "embedding": (
        "an embedding model",
        "/v1/embeddings and /api/embed, not chat, completions, messages or responses",
    ),
    "vision": ("a vision model", "chat, completions, messages and responses, not embeddings"),
}

#: the request types each model type serves beyond its own (a vision model answers text too)
_ALSO_SERVES = {"vision": ("chat",)}


def check_serves(target: Target, wanted: str) -> None:
    """Refuse a request of type `wanted` (`chat`, `embedding`) to a model that does not serve it,
    saying what the model is and which endpoints it serves."""
    found = target.model.found
    if found.unsupported is not None:
        raise UnsupportedModelError(
            f"`{target.requested}` is a {found.unsupported} model, an architecture this server "
            "cannot run (its encoders are BERT, RoBERTa and XLM-RoBERTa)",
            param="model",
        )
    kind = found.model_type
    if kind == wanted or wanted in _ALSO_SERVES.get(kind, ()):
        return
    what, serves = _TYPES[kind]
    raise InvalidRequestError(f"`{target.requested}` is {what}: it serves {serves}", param="model")


def check_loadable(target: Target) -> None:
    """A vision model needs mlx-vlm: without it the request fails before any load, saying
    which extra to install (its card shows `available: false`); and it takes no adapter."""
    vision = target.model.remote is None and target.model.found.model_type == "vision"
    if vision and target.adapter is not None:
        raise InvalidRequestError(
            f"`{target.model.id}` is a vision model: LoRA adapters on vision models are not "
            "supported",
            param="adapters" if target.requested == target.model.id else "model",
        )
    if vision and not vision_installed():
        raise UnsupportedModelError(
            f"`{target.requested}` is a vision model: install the `{VISION_EXTRA}` extra "
            "(mlx-vlm) to serve it",
            param="model",
        )


def model_options(
    target: Target,
    settings: ModelSettings,
    folder: Path | None,
    request: GenerationRequest | None = None,
) -> ModelOptions:
    """The engine's run options for `target` from its settings (and `request`'s draft
    fields); a `chat_template` file is read now (relative to `folder`, the config file's),
    so an edit applies to the next request. The draft's key is set once it is leased."""
    return ModelOptions(
        num_draft_tokens=_draft_tokens(settings, request),
        chat_template=chat_template_text(target.requested, settings.chat_template, folder),
        context_length=settings.context_length,
        kv_bits=settings.kv_bits,
        kv_group_size=_or(settings.kv_group_size, 64),
        quantized_kv_start=_or(settings.quantized_kv_start, DEFAULT_QUANTIZED_KV_START),
    )


def draft_target(
    registry: Registry, settings: ModelSettings, request: GenerationRequest | None
) -> Target | None:
    """The model that drafts for a request (speculative decoding): its `draft_model`, else
    the settings'; none when `num_draft_tokens` is 0, or when no generation is leased for
    (counting tokens). It must be a local model (not an adapter, not an upstream's)."""
    if request is None:
        return None
    name = request.draft_model or settings.draft_model
    if name is None or _draft_tokens(settings, request) == 0:
        return None
    entry = _lookup(registry, name, "draft model", "draft_model")
    if entry.kind != "model":
        raise InvalidRequestError(
            f"`{name}` cannot draft: a draft model must be a local model, not an adapter or an "
            "upstream's",
            param="draft_model",
        )
    return Target(requested=name, model=entry, adapter=None)


@asynccontextmanager
async def draft_lease(pool: Pool, draft: Target | None) -> AsyncIterator[str | None]:
    """A draft model's lease (its pool key), held beside its model's: a pool entry of its
    own, counted in the budget and shared by every model it drafts for."""
    if draft is None:
        yield None
        return
    async with pool.lease(draft.lease_request()) as lease:
        yield lease.key


def _draft_tokens(settings: ModelSettings, request: GenerationRequest | None) -> int:
    asked = request.num_draft_tokens if request is not None else None
    return _or(asked, _or(settings.num_draft_tokens, DEFAULT_DRAFT_TOKENS))


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def chat_template_text(model: str, value: str | None, folder: Path | None) -> str | None:
    """A `chat_template` setting's text: inline Jinja as written, else the file it names."""
    if value is None or inline_template(value):
        return value
    path = Path(value).expanduser()
    if folder is not None and not path.is_absolute():
        path = folder / path
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        # No path in the message: clients see it.
        raise ConfigError(
            f"The chat template file configured for `{model}` cannot be read"
        ) from None


def _lookup(registry: Registry, name: str, what: str, param: str) -> RegistryEntry:
    """`name`'s entry; an unknown one is "not found", naming the field that named it."""
    try:
        return registry.resolve(name)
    except ModelNotFoundError:
        raise ModelNotFoundError(f"The {what} `{name}` does not exist", param=param) from None


def only_model(registry: Registry) -> str | None:
    """The id a request without `model` gets when there is exactly one model."""
    models = [e.id for e in registry if e.kind == "model"]
    return models[0] if len(models) == 1 else None


def resolve(registry: Registry, config: Config, model: str | None, adapter: str | None) -> Target:
    """A request's `model` (and `adapters`) against one registry snapshot."""
    name = model or config.default_model or only_model(registry)
    if name is None:
        raise InvalidRequestError(
            "No `model` given and no `default_model` configured", param="model"
        )
    entry = registry.resolve(name)
    if entry.remote is not None:
        return _remote(registry, name, entry, adapter)
    adapter_entry = None
    if entry.kind == "adapter":
        adapter_entry, entry = entry, registry.resolve(entry.base or "")
    if adapter is not None:
        named = _lookup(registry, adapter, "adapter", "adapters")
        if named.kind != "adapter" or named.base != entry.id:
            raise InvalidRequestError(
                f"`{adapter}` is not an adapter of `{entry.id}`", param="adapters"
            )
        adapter_entry = named
    if adapter_entry is not None and entry.options.distributed is not None:
        raise InvalidRequestError(  # as in mlx_lm's distributed server
            f"`{entry.id}` is served across machines, where adapters are not supported",
            param="adapters" if adapter else "model",
        )
    return Target(requested=name, model=entry, adapter=adapter_entry)


def local_share(model: RegistryEntry) -> int:
    """The bytes of `model` this machine holds: all of them, or for a distributed model the
    shares of its ranks on this machine's loopback (rank 0 always; the other ranks' bytes are
    on their own hosts, and no pool here governs them). A hostfile's ranks are not read
    here: the whole size is counted."""
    spread = model.options.distributed
    size = model.found.size_bytes
    if spread is None or not spread.hosts:
        return size
    here = sum(1 for host in spread.hosts if host in {"127.0.0.1", "localhost", "::1"})
    return size * max(here, 1) // len(spread.hosts)


def _remote(registry: Registry, name: str, entry: RegistryEntry, adapter: str | None) -> Target:
    """A remote id: its upstream applies adapters; `adapters` may name one of its adapters of
    this model, which is then the id forwarded."""
    if adapter is None:
        return Target(requested=name, model=entry, adapter=None)
    named = registry.entries.get(registry.aliases.get(adapter, adapter))
    if named is None or named.remote is None or named.base != entry.id:
        raise InvalidRequestError(
            f"`{adapter}` is not an adapter of `{entry.id}`", param="adapters"
        )
    return Target(requested=name, model=named, adapter=None)
