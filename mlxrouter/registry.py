"""The registry: an immutable snapshot of every id a request can name.

`build_registry(config)` scans the sources (explicit `models:` entries, `model_dirs`, the HF
cache) through `discovery` and returns a new `Registry`; callers swap the whole object in, so a
request always sees one complete snapshot. Only ids resolve: a path or a hub repo that is not a
registered id is "not found", whatever exists on disk. Blocking (filesystem); call it off the
event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from .config import Config, DistributedConfig, ModelEntryConfig
from .discovery import FoundModel, describe_folder, scan_hf_cache, scan_model_dir
from .errors import ModelNotFoundError
from .vision_types import vision_model_types

log = logging.getLogger(__name__)

#: where an entry was found: a `models:` entry's `path`, a `model_dirs` folder, the HF cache,
#: an upstream
Source = Literal["config", "model_dir", "hf_cache", "remote"]


@dataclass(frozen=True, slots=True)
class EntryOptions:
    pinned: bool = False
    preload: bool = False
    #: seconds idle before unloading; None: the pool's idle_ttl
    ttl: float | None = None
    trust_remote_code: bool = False
    #: served by a worker group across machines (`distributed.py`), not by the engine
    distributed: DistributedConfig | None = None


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """Where a remote id is served: its upstream (by config name) and the upstream's own id."""

    upstream: str
    upstream_id: str
    #: the upstream answered its last poll (and lists this id as available)
    available: bool = True
    #: the upstream says it has this id loaded (servers without the flag: true)
    loaded: bool = True


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One servable id. Adapters name the registry id of their base in `base`. A remote entry
    (`remote` set) is served by an upstream; its `found` holds what the upstream's card says."""

    id: str
    found: FoundModel
    source: Source
    base: str | None = None
    options: EntryOptions = field(default_factory=EntryOptions)
    remote: RemoteModel | None = None

    @property
    def kind(self) -> str:
        return "remote" if self.remote is not None else self.found.kind

    @property
    def path(self) -> Path:
        return self.found.path


@dataclass(frozen=True, slots=True)
class Registry:
    entries: Mapping[str, RegistryEntry]
    #: alias id -> canonical id
    aliases: Mapping[str, str]
    #: human-readable reasons some folders or entries were left out
    problems: tuple[str, ...] = ()

    def resolve(self, model_id: str) -> RegistryEntry:
        """The entry for an id or alias; ModelNotFoundError otherwise. Never touches the disk."""
        canonical = self.aliases.get(model_id, model_id)
        entry = self.entries.get(canonical)
        if entry is None:
            raise ModelNotFoundError(f"The model `{model_id}` does not exist", param="model")
        return entry

    def __iter__(self) -> Iterator[RegistryEntry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def ids(self) -> list[str]:
        """Every name a request can use: ids and aliases, sorted."""
        return sorted([*self.entries, *self.aliases])


def empty_registry() -> Registry:
    return Registry(entries=MappingProxyType({}), aliases=MappingProxyType({}))


def _options(entry: ModelEntryConfig) -> EntryOptions:
    return EntryOptions(
        pinned=entry.pinned,
        preload=entry.preload,
        ttl=entry.ttl,
        trust_remote_code=entry.trust_remote_code,
        distributed=entry.distributed,
    )


def _typed(entry: RegistryEntry, spec: ModelEntryConfig) -> RegistryEntry:
    """`spec`'s `type:` over discovery's guess (the folder described again as that type), and
    its `matryoshka:` over the folder's declarations."""
    if spec.type is not None and spec.type != entry.found.model_type and entry.kind == "model":
        typed = describe_folder(
            entry.found.id,
            entry.path,
            created=entry.found.created,
            model_type=spec.type,
            vision_types=vision_model_types(),
        )
        entry = entry if typed is None else replace(entry, found=typed)
    if spec.matryoshka is not None and entry.found.model_type == "embedding":
        entry = replace(entry, found=replace(entry.found, matryoshka=spec.matryoshka))
    return entry


def _scan_sources(config: Config, problems: list[str]) -> dict[str, RegistryEntry]:
    """Lowest precedence first, so later sources replace earlier ones with the same id."""
    found: dict[str, RegistryEntry] = {}
    vision = vision_model_types()  # asked of mlx-vlm's registry once per process
    cache_dir = config.hf_cache_dir()
    if cache_dir is not None:
        for model in scan_hf_cache(cache_dir, vision):
            found[model.id] = RegistryEntry(model.id, model, "hf_cache")
    for folder in config.model_dir_paths():
        for model in scan_model_dir(folder, vision):
            found[model.id] = RegistryEntry(model.id, model, "model_dir")
    for model_id, entry in config.models.items():
        if entry.path is None and entry.model is None:  # options for a model found elsewhere
            if model_id in found:
                found[model_id] = _typed(replace(found[model_id], options=_options(entry)), entry)
            else:
                problems.append(f"models.{model_id}: sets options for an id that is not found")
            continue
        if entry.path is None:
            continue
        described = describe_folder(model_id, Path(entry.path).expanduser(), vision_types=vision)
        if described is None:
            problems.append(f"models.{model_id}: the folder is not a complete model or adapter")
            continue
        found[model_id] = _typed(
            RegistryEntry(model_id, described, "config", options=_options(entry)), entry
        )
    return found


def _resolve_base(
    entry: RegistryEntry, entries: Mapping[str, RegistryEntry], base: str | None
) -> str | None:
    """An adapter's base: an explicit `base:`, else adapter_config's `model` matched to an id
    or to the path of a registered model."""
    ref = base or entry.found.base_ref
    if ref is None:
        return None
    if ref in entries and entries[ref].kind == "model":
        return ref
    try:
        ref_path = Path(ref).expanduser().resolve()
    except (OSError, RuntimeError):
        return None
    for candidate in entries.values():
        if candidate.kind == "model" and candidate.path == ref_path:
            return candidate.id
    return None


def build_registry(config: Config) -> Registry:
    """Scan every source and return a complete new snapshot. Blocking."""
    problems: list[str] = []
    found = _scan_sources(config, problems)

    entries: dict[str, RegistryEntry] = {}
    for model_id, candidate in found.items():
        entry = candidate
        if entry.found.trusts_code and not entry.options.trust_remote_code:
            problems.append(
                f"{model_id}: its config asks to run code; set `trust_remote_code: true` "
                "in its `models:` entry to serve it"
            )
            continue
        if entry.kind == "adapter":
            explicit = config.models.get(model_id)
            base = _resolve_base(entry, found, explicit.base if explicit else None)
            if base is None:
                problems.append(f"{model_id}: adapter whose base model is not in the registry")
                continue
            entry = replace(entry, base=base)
        entries[model_id] = entry

    aliases: dict[str, str] = {}
    for alias, spec in config.models.items():
        if spec.model is None:
            continue
        target = aliases.get(spec.model, spec.model)
        if target in entries:
            aliases[alias] = target
        else:
            problems.append(f"models.{alias}: alias of `{spec.model}`, which is not registered")
    for problem in problems:
        log.warning("registry: %s", problem)
    return Registry(
        entries=MappingProxyType(dict(sorted(entries.items()))),
        aliases=MappingProxyType(aliases),
        problems=tuple(problems),
    )


def with_remote(local: Registry, remote: list[RegistryEntry]) -> Registry:
    """`local` plus the upstreams' entries (in upstream order; the first upstream listing an
    id serves it). A local id or alias wins over a remote one with the same name (logged)."""
    entries = dict(local.entries)
    for entry in remote:
        if entry.id in local.entries or entry.id in local.aliases:
            log.info("remote id %s (upstream %s) is served locally", entry.id, _upstream(entry))
        elif entry.id in entries:
            log.info("remote id %s of upstream %s is served by another", entry.id, _upstream(entry))
        else:
            entries[entry.id] = entry
    if len(entries) == len(local.entries):
        return local
    return replace(local, entries=MappingProxyType(dict(sorted(entries.items()))))


def _upstream(entry: RegistryEntry) -> str:
    return entry.remote.upstream if entry.remote is not None else "?"


@dataclass(frozen=True, slots=True)
class RegistryDiff:
    """What a rebuild changed, by canonical id."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: still registered, but its files (fingerprint), folder or base changed
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff_registries(old: Registry, new: Registry) -> RegistryDiff:
    """Pure: compare two snapshots entry by entry (a distributed entry's hosts count)."""
    added = sorted(set(new.entries) - set(old.entries))
    removed = sorted(set(old.entries) - set(new.entries))
    changed = sorted(
        key
        for key in set(old.entries) & set(new.entries)
        if _identity(old.entries[key]) != _identity(new.entries[key])
    )
    return RegistryDiff(tuple(added), tuple(removed), tuple(changed))


def _identity(entry: RegistryEntry) -> tuple[object, ...]:
    """What, changed, makes a loaded entry stale."""
    return (entry.found.fingerprint, entry.path, entry.base, entry.options.distributed)
