"""Find servable model folders on disk.

Pure scanners: they return plain data and import nothing else from mlxrouter and nothing
from mlx. The registry calls them from its background rebuild, never on the request path,
yet they stay cheap anyway: one directory listing per folder, one stat per file, and for
safetensors files only the header is read, never the tensor data.

A folder is served only when it is complete. Each safetensors file must be as long as its
header says, so a file still being copied (or a download cut short) is skipped until the
next rebuild finds it whole. Every failure (missing file, bad JSON, permission error,
broken symlink) makes a folder "not servable" and never raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound

__all__ = [
    "FoundModel",
    "Kind",
    "describe_folder",
    "folder_kind",
    "scan_hf_cache",
    "scan_model_dir",
]

logger = logging.getLogger(__name__)

Kind = Literal["model", "adapter"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapters.safetensors"
SAFETENSORS_SUFFIX = ".safetensors"

#: Files that change what a tokenizer produces; those present go into the fingerprint.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)

#: config.json keys that name the context window, in the order they are trusted.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")

#: adapter_config.json keys that name the base model (mlx-lm writes `model`, PEFT the others).
BASE_REF_KEYS = ("model", "base_model", "base_model_name_or_path")

#: config.json keys through which transformers loads code shipped with the model.
REMOTE_CODE_KEYS = ("auto_map", "model_file")

#: The safetensors format caps its JSON header at 100 MB; anything larger is garbage.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
#: Config and index files are a few KB; the cap keeps a mislabelled huge file from being read.
MAX_JSON_BYTES = 16 * 1024 * 1024

# Opening a FIFO named like a weight file would block the scan forever without this.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

# (relative name, size, mtime_ns): what the fingerprint hashes for each file.
_Stamp = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class FoundModel:
    """A servable folder, as plain data the registry can compare between rebuilds."""

    id: str
    path: Path
    kind: Kind
    base_ref: str | None
    created: int
    owned_by: str
    context_length: int | None
    size_bytes: int
    fingerprint: str
    trusts_code: bool
    #: what IDE pickers read: "completion", plus "chat" with a chat template, plus "tools"
    #: when that template renders a `tools` list (adapters: empty; the registry uses the base's)
    capabilities: tuple[str, ...] = ()
    #: weight bits from config.json's `quantization` section; None for unquantised weights
    quantization_bits: int | None = None


@dataclass(frozen=True, slots=True)
class _Inspection:
    """What one look at a folder found; `FoundModel` is built from it."""

    kind: Kind
    config: dict[str, Any]
    adapter_config: dict[str, Any]
    size_bytes: int
    stamps: list[_Stamp]
    has_python: bool


# --- low-level file checks ---------------------------------------------------------------


def _open_regular(path: Path) -> tuple[BinaryIO, os.stat_result] | None:
    """Open a regular file for reading; its fstat is the one stat the file gets."""
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), st


def _stamp_of(folder: Path, name: str) -> _Stamp | None:
    """Size and mtime of a regular file, or None when it is missing or not a file."""
    try:
        st = (folder / name).stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (name, st.st_size, st.st_mtime_ns)


def _read_json(folder: Path, name: str) -> tuple[dict[str, Any], _Stamp] | None:
    """A small JSON object file and its stamp, or None when unreadable or not an object."""
    try:
        opened = _open_regular(folder / name)
        if opened is None:
            return None
        f, st = opened
        with f:
            if st.st_size > MAX_JSON_BYTES:
                return None
            data = json.loads(f.read())
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and bad UTF-8; RecursionError absurdly nested JSON.
        logger.debug("cannot read %s: %s", folder / name, exc)
        return None
    if not isinstance(data, dict):
        return None
    return data, (name, st.st_size, st.st_mtime_ns)


def _data_end(header: dict[str, Any]) -> int | None:
    """The largest tensor end offset in a safetensors header, or None if malformed."""
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            return None
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2):
            return None
        begin, stop = offsets
        # bool is an int subclass; `true` in an offset is corruption, not 1.
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (begin, stop)):
            return None
        if not 0 <= begin <= stop:
            return None
        end = max(end, stop)
    return end


def _check_safetensors(folder: Path, name: str) -> _Stamp | None:
    """Stamp of a *complete* safetensors file, else None.

    Complete means the header parses and the file is exactly header + data long, which
    catches a half-copied file without reading any tensor data.
    """
    path = folder / name
    try:
        opened = _open_regular(path)
        if opened is None:
            return None
        f, st = opened
        with f:
            size = st.st_size
            prefix = f.read(8)
            if len(prefix) != 8:
                return None
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_SAFETENSORS_HEADER or size < 8 + header_len:
                return None
            raw = f.read(header_len)
        if len(raw) != header_len:
            return None
        header = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:
        logger.debug("cannot read safetensors header %s: %s", path, exc)
        return None
    if not isinstance(header, dict):
        return None
    end = _data_end(header)
    if end is None or 8 + header_len + end != size:
        logger.debug("incomplete safetensors %s: %d bytes on disk", path, size)
        return None
    return (name, size, st.st_mtime_ns)


def _is_plain_name(name: object) -> bool:
    """A file name inside the folder itself: no separators, no `..`, not hidden."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
    )


# --- folder inspection -------------------------------------------------------------------


def _inspect_adapter(folder: Path, names: set[str]) -> _Inspection | None:
    read = _read_json(folder, ADAPTER_CONFIG)
    if read is None:
        return None
    adapter_config, config_stamp = read
    weights = _check_safetensors(folder, ADAPTER_WEIGHTS)
    if weights is None:
        return None
    return _Inspection(
        kind="adapter",
        config={},
        adapter_config=adapter_config,
        size_bytes=weights[1],
        stamps=[config_stamp, weights],
        has_python=any(n.endswith(".py") for n in names),
    )


def _weight_names(folder: Path, names: set[str]) -> tuple[list[str], _Stamp | None] | None:
    """The weight files a model folder needs, and the index stamp if sharded."""
    if WEIGHTS_INDEX in names:
        read = _read_json(folder, WEIGHTS_INDEX)
        if read is None:
            return None
        index, index_stamp = read
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            return None
        shards = set(weight_map.values())
        # A shard name that climbs out of the folder is not a weight file of this model.
        if not all(_is_plain_name(s) for s in shards):
            return None
        return sorted(shards), index_stamp
    # Unsharded: every safetensors file is a weight file, so a stray half-copied one blocks.
    plain = sorted(
        n
        for n in names
        if n.endswith(SAFETENSORS_SUFFIX) and n != ADAPTER_WEIGHTS and not n.startswith(".")
    )
    return plain, None


def _tokenizer_stamps(folder: Path, names: set[str]) -> list[_Stamp] | None:
    """Stamps of the tokenizer files present, or None when no usable tokenizer is there."""
    stamps = {
        name: stamp
        for name in TOKENIZER_FILES
        if name in names and (stamp := _stamp_of(folder, name)) is not None
    }
    usable = (
        "tokenizer.json" in stamps
        or "tokenizer.model" in stamps
        or ("tokenizer_config.json" in stamps and "vocab.json" in stamps)
    )
    return list(stamps.values()) if usable else None


def _inspect_model(folder: Path, names: set[str]) -> _Inspection | None:
    read = _read_json(folder, CONFIG)
    if read is None:
        return None
    config, config_stamp = read
    tokenizer = _tokenizer_stamps(folder, names)
    if tokenizer is None:
        logger.debug("no tokenizer in %s", folder)
        return None
    found = _weight_names(folder, names)
    if found is None:
        return None
    shard_names, index_stamp = found
    if not shard_names:
        return None
    weights: list[_Stamp] = []
    for name in shard_names:
        stamp = _check_safetensors(folder, name)
        if stamp is None:
            logger.debug("weights %s missing or incomplete in %s", name, folder)
            return None
        weights.append(stamp)
    stamps = [config_stamp, *weights, *tokenizer]
    if index_stamp is not None:
        stamps.append(index_stamp)
    return _Inspection(
        kind="model",
        config=config,
        adapter_config={},
        size_bytes=sum(w[1] for w in weights),
        stamps=stamps,
        has_python=any(n.endswith(".py") for n in names),
    )


def _inspect(folder: Path) -> _Inspection | None:
    try:
        with os.scandir(folder) as it:
            names = {entry.name for entry in it}
    except OSError as exc:
        # Missing, not a folder, broken symlink, no permission: none of these is servable.
        logger.debug("cannot list %s: %s", folder, exc)
        return None
    if ADAPTER_CONFIG in names and ADAPTER_WEIGHTS in names:
        adapter = _inspect_adapter(folder, names)
        if adapter is not None:
            return adapter
    if CONFIG in names:
        return _inspect_model(folder, names)
    return None


# --- field extraction --------------------------------------------------------------------


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _context_length(config: dict[str, Any]) -> int | None:
    """First present context key, at the top level first, then in a nested `text_config`
    (multimodal configs keep the language model's settings there)."""
    for scope in (config, config.get("text_config")):
        if not isinstance(scope, dict):
            continue
        for key in CONTEXT_KEYS:
            if key in scope:
                return _positive_int(scope[key])
    return None


def _base_ref(adapter_config: dict[str, Any]) -> str | None:
    for key in BASE_REF_KEYS:
        value = adapter_config.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _fingerprint(stamps: list[_Stamp]) -> str:
    digest = hashlib.sha256()
    for name, size, mtime_ns in sorted(stamps):
        digest.update(f"{name}\0{size}\0{mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _resolve(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        # RuntimeError is what Python < 3.13 raises on a symlink loop.
        return None


# --- public API --------------------------------------------------------------------------


def folder_kind(path: Path) -> Kind | None:
    """The kind of a complete, servable folder (`model` or `adapter`), else None."""
    inspection = _inspect(path)
    return None if inspection is None else inspection.kind


def describe_folder(model_id: str, path: Path, *, created: int | None = None) -> FoundModel | None:
    """Describe the folder at `path` as `model_id`, or None when it is not servable.

    `created` defaults to the folder's mtime; the HF cache passes the revision's time.
    """
    real = _resolve(path)
    if real is None:
        return None
    inspection = _inspect(real)
    if inspection is None:
        return None
    if created is None:
        try:
            created = int(real.stat().st_mtime)
        except OSError:
            return None
    config = inspection.config
    org, sep, _ = model_id.partition("/")
    return FoundModel(
        id=model_id,
        path=real,
        kind=inspection.kind,
        base_ref=_base_ref(inspection.adapter_config) if inspection.kind == "adapter" else None,
        created=created,
        owned_by=org if sep and org else "local",
        context_length=_context_length(config),
        size_bytes=inspection.size_bytes,
        fingerprint=_fingerprint(inspection.stamps),
        trusts_code=inspection.has_python or any(k in config for k in REMOTE_CODE_KEYS),
        capabilities=_capabilities(real) if inspection.kind == "model" else (),
        quantization_bits=_quantization_bits(config),
    )


def _chat_template(folder: Path) -> str | None:
    """The chat template text, wherever transformers keeps it (a .jinja file, or
    tokenizer_config.json's `chat_template`, a string or a list of named templates)."""
    try:
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    read = _read_json(folder, "tokenizer_config.json")
    template = read[0].get("chat_template") if read else None
    if isinstance(template, list):
        template = " ".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else None


def _capabilities(folder: Path) -> tuple[str, ...]:
    template = _chat_template(folder)
    if template is None:
        return ("completion",)
    return ("chat", "completion", "tools") if "tools" in template else ("chat", "completion")


def _quantization_bits(config: dict[str, Any]) -> int | None:
    section = config.get("quantization") or config.get("quantization_config")
    bits = section.get("bits") if isinstance(section, dict) else None
    return bits if isinstance(bits, int) and not isinstance(bits, bool) else None


def _subfolders(folder: Path, root_real: Path) -> list[tuple[str, Path]]:
    """Visible subfolders of `folder` as (name, real path), refusing any whose real path
    leaves `root_real` (a symlink out of the model dir) or is the root itself (a loop)."""
    try:
        with os.scandir(folder) as it:
            entries = [(e.name, Path(e.path)) for e in it if not e.name.startswith(".")]
    except OSError as exc:
        logger.debug("cannot list %s: %s", folder, exc)
        return []
    found: list[tuple[str, Path]] = []
    for name, entry_path in sorted(entries):
        real = _resolve(entry_path)
        if real is None or not real.is_dir():
            continue
        if real == root_real or not real.is_relative_to(root_real):
            logger.debug("refusing %s: resolves to %s, outside %s", entry_path, real, root_real)
            continue
        found.append((name, real))
    return found


def scan_model_dir(root: Path) -> list[FoundModel]:
    """Servable folders under `root`, sorted by id.

    A direct subfolder that is a model or adapter is served under its name; one that is
    not is looked into once more, and its servable subfolders are served as `parent/child`
    (the `org/name` layout). Hidden folders are skipped; a missing root gives [].
    """
    root_real = _resolve(root)
    if root_real is None or not root_real.is_dir():
        return []
    found: list[FoundModel] = []
    for name, real in _subfolders(root_real, root_real):
        described = describe_folder(name, real)
        if described is not None:
            found.append(described)
            continue
        for child_name, child_real in _subfolders(real, root_real):
            described = describe_folder(f"{name}/{child_name}", child_real)
            if described is not None:
                found.append(described)
    found.sort(key=lambda m: m.id)
    return found


def scan_hf_cache(cache_dir: Path) -> list[FoundModel]:
    """Servable model repos in a Hugging Face hub cache, sorted by id.

    Each model repo serves its `main` snapshot if it has one, else its most recently
    modified revision. Snapshot files are symlinks into `blobs/`; sizes and completeness
    follow them. A missing cache or a failed scan gives [].
    """
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    except Exception as exc:  # noqa: BLE001 - a third-party walk of a user dir must not break a rebuild
        logger.debug("cannot scan HF cache %s: %s", cache_dir, exc)
        return []
    for warning in info.warnings:
        # Corrupted repos are left out by huggingface_hub itself; the rest still serve.
        logger.debug("HF cache warning: %s", warning)
    found: list[FoundModel] = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = repo.refs.get("main") or max(
            repo.revisions, key=lambda r: (r.last_modified, r.commit_hash)
        )
        described = describe_folder(
            repo.repo_id, revision.snapshot_path, created=int(revision.last_modified)
        )
        if described is not None:
            found.append(described)
    found.sort(key=lambda m: m.id)
    return found
