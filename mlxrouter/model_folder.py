"""What one candidate folder holds, read cheaply: is it a complete model or adapter?

Part of discovery, and pure like it: plain data out, nothing imported from mlxrouter, nothing
from mlx. One directory listing per folder, one stat per file, small JSON files read whole, and
for safetensors files only the header: `safetensors.safe_open` maps the file and parses the
header, and refuses a file whose tensors do not exactly cover the bytes after it, so a file still
being copied (or a download cut short) is skipped until a later rebuild finds it whole. The
tensor data is never read. Every failure (missing file, bad JSON, permission error, broken
symlink) makes a folder "not servable" and never raises.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from safetensors import SafetensorError, safe_open

__all__ = ["Inspection", "Kind", "Stamp", "inspect_folder", "read_json"]

logger = logging.getLogger(__name__)

Kind = Literal["model", "adapter"]

CONFIG = "config.json"
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

#: Config and index files are a few KB; the cap keeps a mislabelled huge file from being read.
MAX_JSON_BYTES = 16 * 1024 * 1024

# Opening a FIFO named like a weight file would block the scan forever without this.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)

#: (relative name, size, mtime_ns): what the fingerprint hashes for each file.
Stamp = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Inspection:
    """What one look at a folder found; discovery builds its `FoundModel` from it."""

    kind: Kind
    config: dict[str, Any]
    adapter_config: dict[str, Any]
    size_bytes: int
    stamps: list[Stamp]
    has_python: bool


# --- single files ------------------------------------------------------------------------


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


def _stamp_of(folder: Path, name: str) -> Stamp | None:
    """Size and mtime of a regular file, or None when it is missing or not a file."""
    try:
        st = (folder / name).stat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (name, st.st_size, st.st_mtime_ns)


def read_json(folder: Path, name: str) -> tuple[dict[str, Any], Stamp] | None:
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


def _check_safetensors(folder: Path, name: str) -> Stamp | None:
    """Stamp of a *complete* safetensors file, else None (see the module docstring)."""
    path = folder / name
    try:
        # Our own open first: a FIFO must not reach safe_open, whose open would block on it.
        opened = _open_regular(path)
        if opened is None:
            return None
        f, st = opened
        with f, safe_open(path, framework="numpy"):
            pass
        after = path.stat()
    except (OSError, SafetensorError) as exc:
        logger.debug("incomplete or unreadable safetensors %s: %s", path, exc)
        return None
    if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) != (
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    ):
        logger.debug("%s changed while it was checked", path)
        return None
    return (name, st.st_size, st.st_mtime_ns)


def _is_plain_name(name: object) -> bool:
    """A file name inside the folder itself: no separators, no `..`, not hidden."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and not name.startswith(".")
    )


# --- folders -----------------------------------------------------------------------------


def _inspect_adapter(folder: Path, names: set[str]) -> Inspection | None:
    read = read_json(folder, ADAPTER_CONFIG)
    weights = _check_safetensors(folder, ADAPTER_WEIGHTS) if read is not None else None
    if read is None or weights is None:
        return None
    adapter_config, config_stamp = read
    return Inspection(
        kind="adapter",
        config={},
        adapter_config=adapter_config,
        size_bytes=weights[1],
        stamps=[config_stamp, weights],
        has_python=any(n.endswith(".py") for n in names),
    )


def _weight_names(folder: Path, names: set[str]) -> tuple[list[str], Stamp | None] | None:
    """The weight files a model folder needs, and the index stamp if sharded."""
    if WEIGHTS_INDEX in names:
        read = read_json(folder, WEIGHTS_INDEX)
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


def _tokenizer_stamps(folder: Path, names: set[str]) -> list[Stamp] | None:
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


def _inspect_model(folder: Path, names: set[str]) -> Inspection | None:
    read = read_json(folder, CONFIG)
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
    weights: list[Stamp] = []
    for name in shard_names:
        stamp = _check_safetensors(folder, name)
        if stamp is None:
            logger.debug("weights %s missing or incomplete in %s", name, folder)
            return None
        weights.append(stamp)
    stamps = [config_stamp, *weights, *tokenizer]
    if index_stamp is not None:
        stamps.append(index_stamp)
    return Inspection(
        kind="model",
        config=config,
        adapter_config={},
        size_bytes=sum(w[1] for w in weights),
        stamps=stamps,
        has_python=any(n.endswith(".py") for n in names),
    )


def inspect_folder(folder: Path) -> Inspection | None:
    """What `folder` holds when it is a complete model or adapter folder, else None."""
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
