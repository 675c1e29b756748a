"""What a request's `model` (and `adapters`) fields name: a `Target` resolved against one
registry snapshot, and the lease request that loads it. Pure over the registry and config."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config, ModelSettings
from .engine import LoadSpec
from .errors import InvalidRequestError, ModelNotFoundError
from .pool import LeaseRequest
from .registry import Registry, RegistryEntry


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
            ),
            estimated_bytes=model.found.size_bytes,
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
    adapter_entry = None
    if entry.kind == "adapter":
        adapter_entry, entry = entry, registry.resolve(entry.base or "")
    if adapter is not None:
        try:
            named = registry.resolve(adapter)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"The adapter `{adapter}` does not exist", param="adapters"
            ) from None
        if named.kind != "adapter" or named.base != entry.id:
            raise InvalidRequestError(
                f"`{adapter}` is not an adapter of `{entry.id}`", param="adapters"
            )
        adapter_entry = named
    return Target(requested=name, model=entry, adapter=adapter_entry)
