"""Find servable model folders on disk.

Pure scanners: they return plain data and import nothing from mlxrouter but `model_folder`,
their own half, and nothing from mlx. The registry calls them from its background rebuild, never
on the request path, yet they stay cheap anyway: `model_folder` looks at each folder with one
directory listing, one stat per file and, for safetensors files, the header only.

A folder is served only when it is complete (see `model_folder`); every failure makes a folder
"not servable" and never raises.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound

from .model_folder import Kind, Stamp, inspect_folder, read_json

__all__ = [
    "FoundModel",
    "Kind",
    "ModelType",
    "describe_folder",
    "folder_kind",
    "scan_hf_cache",
    "scan_model_dir",
    "unsupported_encoder",
]

logger = logging.getLogger(__name__)

#: config.json keys that name the context window, in the order they are trusted.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")

#: adapter_config.json keys that name the base model (mlx-lm writes `model`, PEFT the others).
BASE_REF_KEYS = ("model", "base_model", "base_model_name_or_path")

#: config.json keys through which transformers loads code shipped with the model.
REMOTE_CODE_KEYS = ("auto_map", "model_file")

#: what a model serves: chat/completions, or embeddings
ModelType = Literal["chat", "embedding", "vision"]
#: the config.json key a GGUF conversion (`gguf.convert_gguf`) marks its folder with
CONVERTED_FROM_KEY = "mlxrouter_converted_from"

#: config.json `architectures` that are encoders: their folders serve embeddings only
ENCODER_ARCHITECTURES = frozenset(
    {
        "BertModel",
        "XLMRobertaModel",
        "ModernBertModel",
        "NomicBertModel",
        "RobertaModel",
        "MPNetModel",
        "DistilBertModel",
    }
)

#: config.json `model_type`s of encoders (a folder may name no architecture)
ENCODER_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "modernbert", "nomic_bert", "mpnet", "distilbert"}
)

#: encoder `model_type`s the engine runs (`engine/bert.py`: BERT, and RoBERTa / XLM-RoBERTa,
#: which are BERT with positions counted from after the padding id), with absolute positions
RUNNABLE_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta"})

#: encoders whose positions start after the padding id (`pad_token_id + 1`)
PADDING_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta"})

#: README.md front-matter tags that declare Matryoshka training: sentence-transformers writes
#: `loss:MatryoshkaLoss` (or `loss:Matryoshka2dLoss`) into the cards of the models it trains
MATRYOSHKA_TAG = "matryoshka"

#: the most of README.md read for its front matter (model cards run to tens of KB)
MAX_CARD_BYTES = 256 * 1024


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
    #: when that template renders a `tools` list and "thinking" when it has thinking markers or
    #: the `enable_thinking` switch (adapters: empty; the registry uses the base's)
    capabilities: tuple[str, ...] = ()
    #: weight bits from config.json's `quantization` section; None for unquantised weights
    quantization_bits: int | None = None
    #: config.json's `model_type` ("llama", "qwen3", ...); None when absent (adapters)
    architecture: str | None = None
    #: "embedding" for a sentence-transformers layout or an encoder architecture, "vision" for
    #: a `vision_config` or a type mlx-vlm serves as vision, else "chat" (a `models:` entry's
    #: `type:` overrides it in the registry)
    model_type: ModelType = "chat"
    #: embedding models: the vector's length and the most tokens one input may have
    dimensions: int | None = None
    max_input_tokens: int | None = None
    #: embedding models trained to be truncated (Matryoshka): a request's `dimensions` may ask
    #: for a shorter vector (declared by config.json's `matryoshka_dimensions` or a model-card
    #: tag; see `_matryoshka`)
    matryoshka: bool = False
    #: an encoder architecture the engine cannot run (`NomicBertModel`): listed, not served
    unsupported: str | None = None
    #: "gguf" for a folder `mlxrouter import-gguf` (or the demo model's set-up) converted,
    #: marked by config.json's `mlxrouter_converted_from`; else None
    converted_from: Literal["gguf"] | None = None


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


def _fingerprint(stamps: list[Stamp]) -> str:
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
    inspection = inspect_folder(path)
    return None if inspection is None else inspection.kind


def describe_folder(
    model_id: str,
    path: Path,
    *,
    created: int | None = None,
    model_type: ModelType | None = None,
    vision_types: frozenset[str] = frozenset(),
) -> FoundModel | None:
    """Describe the folder at `path` as `model_id`, or None when it is not servable.

    `created` defaults to the folder's mtime; the HF cache passes the revision's time.
    `model_type` (a `models:` entry's `type:`) replaces the guess from the folder's files.
    `vision_types`: the config `model_type`s mlx-vlm serves as vision models (`vision_types`
    module); a config with a `vision_config` is a vision model whatever its type.
    """
    real = _resolve(path)
    if real is None:
        return None
    inspection = inspect_folder(real)
    if inspection is None:
        return None
    if created is None:
        try:
            created = int(real.stat().st_mtime)
        except OSError:
            return None
    config = inspection.config
    org, sep, _ = model_id.partition("/")
    is_model = inspection.kind == "model"
    if model_type is None:
        model_type = _guess_type(real, config, vision_types) if is_model else "chat"
    embedding = _embedding_fields(real, config) if model_type == "embedding" else (None, None)
    is_embedding = model_type == "embedding" and is_model
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
        capabilities=_capabilities(real, model_type) if is_model else (),
        quantization_bits=_quantization_bits(config),
        architecture=_architecture(config) if is_model else None,
        model_type=model_type,
        dimensions=embedding[0],
        max_input_tokens=embedding[1],
        matryoshka=is_embedding and _matryoshka(real, config),
        unsupported=unsupported_encoder(config) if is_embedding else None,
        converted_from="gguf" if config.get(CONVERTED_FROM_KEY) == "gguf" else None,
    )


def _guess_type(folder: Path, config: dict[str, Any], vision_types: frozenset[str]) -> ModelType:
    if _is_embedder(folder, config):
        return "embedding"
    architecture = _architecture(config)
    if "vision_config" in config or (architecture or "").lower() in vision_types:
        return "vision"
    return "chat"


def unsupported_encoder(config: dict[str, Any]) -> str | None:
    """The architecture's name when `config` is an encoder the engine cannot run, else None
    (decoder embedders run on mlx_lm's models, whose own load says when one is unknown)."""
    architectures = config.get("architectures")
    listed = architectures if isinstance(architectures, list) else []
    names = [a for a in listed if isinstance(a, str)]
    model_type = config.get("model_type")
    encoder = any(a in ENCODER_ARCHITECTURES for a in names) or model_type in ENCODER_MODEL_TYPES
    if not encoder:
        return None
    positions = config.get("position_embedding_type", "absolute")
    if model_type in RUNNABLE_ENCODERS and positions == "absolute":
        return None
    return next(iter(names), None) or str(model_type or "unknown")


def _matryoshka(folder: Path, config: dict[str, Any]) -> bool:
    """Trained to be truncated: config.json's `matryoshka_dimensions` (jina-embeddings-v3's
    declaration), or a `matryoshka` tag in the model card's front matter (the
    `loss:MatryoshkaLoss` tag sentence-transformers writes for the models it trains)."""
    declared = config.get("matryoshka_dimensions")
    if isinstance(declared, list) and declared:
        return True
    return any(MATRYOSHKA_TAG in tag.lower() for tag in _card_tags(folder))


def _card_tags(folder: Path) -> list[str]:
    """The `tags` of README.md's YAML front matter (none when unreadable)."""
    try:
        with (folder / "README.md").open("rb") as f:
            head = f.read(MAX_CARD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return []
    if not head.startswith("---"):
        return []
    end = head.find("\n---", 3)
    if end < 0:
        return []
    try:
        meta = yaml.safe_load(head[3:end])
    except yaml.YAMLError:
        return []
    tags = meta.get("tags") if isinstance(meta, dict) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _is_embedder(folder: Path, config: dict[str, Any]) -> bool:
    """A sentence-transformers layout (its pooling module), or an encoder architecture."""
    if (folder / "modules.json").is_file() or (folder / "1_Pooling" / "config.json").is_file():
        return True
    architectures = config.get("architectures")
    return isinstance(architectures, list) and any(
        a in ENCODER_ARCHITECTURES for a in architectures
    )


def _embedding_fields(folder: Path, config: dict[str, Any]) -> tuple[int | None, int | None]:
    """(dimensions, max_input_tokens): the pooling module's width, else the hidden size; the
    sentence-transformers `max_seq_length`, else the context length."""
    pooling = read_json(folder / "1_Pooling", "config.json")
    dimensions = _positive_int(pooling[0].get("word_embedding_dimension")) if pooling else None
    if dimensions is None:
        dimensions = _positive_int(config.get("hidden_size"))
    sbert = read_json(folder, "sentence_bert_config.json")
    limit = _positive_int(sbert[0].get("max_seq_length")) if sbert else None
    context = _context_length(config)
    pad = config.get("pad_token_id", 1)
    if context is not None and config.get("model_type") in PADDING_OFFSET_TYPES:
        # (XLM-)RoBERTa's position table spends its first `pad_token_id + 1` rows
        context -= (pad if isinstance(pad, int) else 1) + 1
    if limit is None or (context is not None and context < limit):
        limit = context
    return dimensions, limit


def _architecture(config: dict[str, Any]) -> str | None:
    value = config.get("model_type")
    return value if isinstance(value, str) and value else None


def _chat_template(folder: Path) -> str | None:
    """The chat template text, wherever transformers keeps it (a .jinja file, or
    tokenizer_config.json's `chat_template`, a string or a list of named templates)."""
    try:
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    read = read_json(folder, "tokenizer_config.json")
    template = read[0].get("chat_template") if read else None
    if isinstance(template, list):
        template = " ".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else None


#: what in a chat template shows a thinking model: it opens or closes a thinking block, or
#: reads the `enable_thinking` switch (Qwen3, DeepSeek-R1, SmolLM3, ...)
THINKING_SIGNS = ("<think>", "</think>", "enable_thinking")


def _capabilities(folder: Path, model_type: ModelType) -> tuple[str, ...]:
    if model_type == "embedding":
        return ("embeddings",)
    template = _chat_template(folder)
    if template is None:
        return ("completion",)
    found = ["chat", "completion"]
    if "tools" in template:
        found.append("tools")
    if any(sign in template for sign in THINKING_SIGNS):
        found.append("thinking")
    if model_type == "vision":
        found.append("vision")
    return tuple(found)


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


def scan_model_dir(root: Path, vision_types: frozenset[str] = frozenset()) -> list[FoundModel]:
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
        described = describe_folder(name, real, vision_types=vision_types)
        if described is not None:
            found.append(described)
            continue
        for child_name, child_real in _subfolders(real, root_real):
            described = describe_folder(
                f"{name}/{child_name}", child_real, vision_types=vision_types
            )
            if described is not None:
                found.append(described)
    found.sort(key=lambda m: m.id)
    return found


def scan_hf_cache(cache_dir: Path, vision_types: frozenset[str] = frozenset()) -> list[FoundModel]:
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
            repo.repo_id,
            revision.snapshot_path,
            created=int(revision.last_modified),
            vision_types=vision_types,
        )
        if described is not None:
            found.append(described)
    found.sort(key=lambda m: m.id)
    return found
