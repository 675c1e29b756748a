"""The YAML config, parsed once into frozen structs.

`load_config(path)` reads a file with `yaml.safe_load` and validates it with msgspec (unknown
keys and wrong types are errors naming the key and the file). Sizes and durations are decoded
here, once, into `ByteSize`, `MemoryLimit` and `Duration` (`units.py`). Reloading means calling
it again and swapping the result in; nothing here is cached at import time.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from .errors import ConfigError
from .paths import default_paths, hf_hub_cache
from .units import ByteSize, Duration, MemoryLimit, decode_units

Seconds = Annotated[float, msgspec.Meta(ge=0)]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base for config sections: immutable, and a typo in a key is an error, not a silent no-op."""


class PoolConfig(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_models: Annotated[int, msgspec.Meta(ge=1)] = 2
    #: bytes ("8GB", "512MiB", 123456) or a share of physical memory ("60%"); null = no byte limit
    max_memory: MemoryLimit | None = None
    #: unload an entry idle this long (seconds or "10m"); null (or "forever") = never
    idle_ttl: Duration = Duration.FOREVER
    #: how long a request waits for room in a full pool before 503
    queue_timeout: Seconds = 30.0
    #: requests that may wait for room at once; more are refused at once with 503
    max_queue: Annotated[int, msgspec.Meta(ge=0)] = 64
    #: KV caches kept per loaded entry so follow-up turns reuse their prefix; counted in
    #: max_memory for every entry; 0 turns prefix reuse off
    prompt_cache_bytes: ByteSize = ByteSize.parse("256MiB")
    #: MLX's buffer cache: freed buffers kept for reuse rather than returned to the system, on
    #: top of the entries' memory (not counted in max_memory); null = MLX's own default (on
    #: Metal, up to MLX's memory limit: most of the GPU's working set)
    mlx_cache_bytes: ByteSize | None = ByteSize.parse("256MiB")
    #: prompt caches written to disk (the cache folder) when an entry is evicted or unloaded
    #: or the daemon stops, and read back when a prompt's prefix matches, also after a
    #: restart; least recently used files go first; null = 10% of the free disk, at most
    #: 20GB; 0 turns it off
    disk_cache_bytes: ByteSize | None = None


class ResponsesConfig(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`/v1/responses`: the in-memory store behind `previous_response_id` and
    `GET`/`DELETE /v1/responses/{id}` (least recently used responses go first)."""

    #: most responses kept; 0 keeps none
    store_max_count: Annotated[int, msgspec.Meta(ge=0)] = 1000
    #: most bytes kept (the responses' JSON, their input included)
    store_max_bytes: ByteSize = ByteSize.parse("64MiB")


class UiConfig(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The dashboard's server side: `/admin/activity` and `/admin/events`. `ui: false` is
    short for `ui: {enabled: false}`."""

    enabled: bool = True
    #: requests kept in the activity ring (memory only)
    history: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500


class ImagesConfig(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Images in prompts (`images.py`): limits, and whether image URLs are fetched at all."""

    #: fetch `http(s)` image URLs; off, such an image is refused (clients send data URLs)
    allow_urls: bool = False
    #: the hosts URLs may name (and redirect to): `example.com`, `*.example.com` (its
    #: subdomains), `*` (any); a loopback, link-local or private address only when named exactly
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    #: the largest image file, as sent or fetched
    max_bytes: ByteSize = ByteSize.parse("20MB")
    #: the most pixels (width x height) an image may declare; larger ones are never decoded
    max_pixels: Annotated[int, msgspec.Meta(ge=1)] = 40_000_000
    #: the most images one request may carry (its whole conversation)
    max_per_request: Annotated[int, msgspec.Meta(ge=0)] = 8
    #: seconds one image URL may take to fetch, redirects included
    fetch_timeout: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class ModelSettings(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-model request defaults: under a `models:` entry, or in `defaults:` for every model.
    A request's own field wins over the entry's, which wins over `defaults:`. Unset (null)
    means "not set here"."""

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    min_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    #: XTC sampling: its probability per token, and the threshold (at most 0.5)
    xtc_probability: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    xtc_threshold: Annotated[float, msgspec.Meta(ge=0, le=0.5)] | None = None
    #: completion length when a request names none (never beyond the model's context)
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    #: a system message prepended when a chat request has no system (or developer) message
    system_prompt: str | None = None
    #: chat-template variables, e.g. {enable_thinking: false}; a request's own keys win
    chat_template_kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    #: the chat template used instead of the model's own: inline Jinja (it has `{{` or `{%`)
    #: or a file's path (`~` expanded, relative to the config file's folder); never a request's
    chat_template: str | None = None
    #: a context length below the model's own: prompts and `max_tokens` must fit it
    context_length: Annotated[int, msgspec.Meta(ge=2)] | None = None
    #: quantize the KV cache to this many bits (mlx_lm's quantized caches; such requests are
    #: not batched); in groups of `kv_group_size`, once a sequence has `quantized_kv_start`
    #: tokens (mlx_lm's default 5000)
    kv_bits: Literal[2, 3, 4, 5, 6, 8] | None = None
    kv_group_size: Literal[32, 64, 128] | None = None
    quantized_kv_start: Annotated[int, msgspec.Meta(ge=0)] | None = None
    #: speculative decoding: a registry id whose model drafts tokens this one checks (a pool
    #: entry of its own, sharing this model's tokenizer), and how many per step (default 3;
    #: 0 turns drafting off)
    draft_model: str | None = None
    num_draft_tokens: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = None

    def over(self, lower: ModelSettings) -> ModelSettings:
        """These settings, with `lower`'s filling whatever is unset here."""
        fields = {
            name: getattr(lower, name) if getattr(self, name) is None else getattr(self, name)
            for name in ModelSettings.__struct_fields__
        }
        fields["chat_template_kwargs"] = {**lower.chat_template_kwargs, **self.chat_template_kwargs}
        return ModelSettings(**fields)


def inline_template(value: str) -> bool:
    """Whether a `chat_template` setting is Jinja itself (else it names a file)."""
    return "{{" in value or "{%" in value


class DistributedConfig(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One model served across machines by MLX's distributed runtime: `mlx.launch` starts
    `mlx_lm.server` on every host (`distributed.py`); the first host is this one."""

    #: one entry per rank (IPs for the ring backend); or `hostfile:`, as written by
    #: `mlx.distributed_config`
    hosts: list[str] | None = None
    hostfile: str | None = None
    backend: Literal["ring", "jaccl", "mpi"] = "ring"
    #: tensor: every rank holds a slice of every layer; pipeline: a run of layers each
    parallel: Literal["tensor", "pipeline"] = "tensor"
    #: the Python that has mlx_lm on the hosts (default: this daemon's)
    python: str | None = None
    #: environment variables for every rank
    env: dict[str, str] = msgspec.field(default_factory=dict)


class ModelEntryConfig(ModelSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    #: a model or adapter folder served under this entry's id
    path: str | None = None
    #: alias: another registry id served under this entry's id
    model: str | None = None
    #: adapters: the base model's registry id (overrides adapter_config.json)
    base: str | None = None
    pinned: bool = False
    preload: bool = False
    #: unload after this long idle; null: the pool's `idle_ttl`
    ttl: Duration | None = None
    trust_remote_code: bool = False
    #: serve `path` across several machines (its own pool entry; see DistributedConfig)
    distributed: DistributedConfig | None = None
    #: what the model serves, when discovery's guess is wrong: chat, embeddings, or chat with
    #: images (vision)
    type: Literal["chat", "embedding", "vision"] | None = None
    #: an embedding model trained for shorter vectors (Matryoshka) that its files do not
    #: declare (Qwen3-Embedding): requests may ask for fewer `dimensions`; null: its files say
    matryoshka: bool | None = None


class UpstreamConfig(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Another OpenAI-compatible server whose models this daemon also serves (`upstreams.py`)."""

    #: names it in /v1/models (`upstream`), errors, /health and metrics
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    #: its OpenAI base URL, ending in /v1 (http or https)
    url: str
    #: sent as `Authorization: Bearer <key>`
    api_key: str | None = None
    #: serve only these of its ids (before `prefix`); unset: all it lists
    models: list[str] | None = None
    #: prepended to its ids here (`office/` serves its `qwen` as `office/qwen`)
    prefix: str = ""
    #: seconds to wait for it to connect, answer, or send the next chunk of a stream
    timeout: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    #: seconds between polls of its /models (its model list, and whether it is up)
    health_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class Config(_Strict, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    #: true (HF_HUB_CACHE or the default cache), false, or a hub cache folder
    hf_cache: bool | str = True
    model_dirs: list[str] = msgspec.field(default_factory=list)
    #: the most inputs one embeddings request may have (OpenAI's limit)
    max_embedding_inputs: Annotated[int, msgspec.Meta(ge=1)] = 2048
    models: dict[str, ModelEntryConfig] = msgspec.field(default_factory=dict)
    #: request defaults for every model (a `models:` entry's own settings win)
    defaults: ModelSettings = msgspec.field(default_factory=ModelSettings)
    default_model: str | None = None
    pool: PoolConfig = msgspec.field(default_factory=PoolConfig)
    #: other OpenAI-compatible servers whose models are served here too (local ids win)
    upstreams: list[UpstreamConfig] = msgspec.field(default_factory=list)
    responses: ResponsesConfig = msgspec.field(default_factory=ResponsesConfig)
    images: ImagesConfig = msgspec.field(default_factory=ImagesConfig)
    #: the dashboard's routes and their activity ring; `false` turns them off (404)
    ui: UiConfig | bool = msgspec.field(default_factory=UiConfig)
    api_key: str | None = None
    log_level: str = "info"
    #: the largest completion a request gets when it names no max_tokens
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 2048
    #: sampling temperature for requests that name none; unset, OpenAI's default 1.0 applies
    default_temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    #: Host header names accepted besides loopback ones ("*" accepts any: not advised)
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    #: browser origins allowed by CORS (none by default)
    cors_origins: list[str] = msgspec.field(default_factory=list)
    #: largest request body; larger ones get 413 before the body is read
    max_request_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16 * 1024 * 1024
    #: seconds a client may stop reading a response before it is cut off
    write_timeout: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    #: seconds SIGTERM/SIGINT lets requests in flight (streams included) finish
    shutdown_grace: Seconds = 30.0
    #: also log to a rotating file in the log folder (`mlxrouter paths`)
    log_file: bool = True
    #: log each request's prompt (off: prompts are private by default)
    log_prompts: bool = False

    @property
    def ui_config(self) -> UiConfig:
        """`ui:` as a mapping whether it was written as one or as `true` / `false`."""
        if isinstance(self.ui, UiConfig):
            return self.ui
        return UiConfig(enabled=self.ui)

    def hf_cache_dir(self) -> Path | None:
        if self.hf_cache is False:
            return None
        if self.hf_cache is True:
            return hf_hub_cache()
        return Path(self.hf_cache).expanduser()

    def model_dir_paths(self) -> list[Path]:
        """Configured folders, then the data folder where the demo and imported GGUFs live."""
        dirs = [Path(d).expanduser() for d in self.model_dirs]
        models_dir = default_paths().models_dir
        return dirs if models_dir in dirs else [*dirs, models_dir]


def _check_values(config: Config) -> None:
    """Checks msgspec's types cannot express; messages name the key."""
    for model_id, entry in config.models.items():
        if entry.path is not None and entry.model is not None:
            raise ValueError(f"`models.{model_id}` takes `path` or `model`, not both")
        spread = entry.distributed
        if spread is not None:
            if entry.path is None:
                raise ValueError(f"`models.{model_id}.distributed` needs the entry's `path`")
            if (spread.hosts is None) == (spread.hostfile is None):
                raise ValueError(
                    f"`models.{model_id}.distributed` takes `hosts` or `hostfile`, one of them"
                )
            if spread.hosts is not None and len(spread.hosts) < 2:
                raise ValueError(f"`models.{model_id}.distributed.hosts` needs two hosts or more")
    names = [upstream.name for upstream in config.upstreams]
    for index, upstream in enumerate(config.upstreams):
        if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?/v1/?", upstream.url):
            raise ValueError(
                f"`upstreams.{index}.url` must be an http(s) URL ending in /v1, "
                f"such as http://192.168.1.20:8080/v1"
            )
    if len(set(names)) != len(names):
        raise ValueError("`upstreams`: each entry needs a different `name`")
    for host in config.images.allowed_hosts:
        if not _host_entry(host.strip()):
            raise ValueError(
                f"`images.allowed_hosts`: `{host}` is not a host name; write `img.example.com`, "
                "`*.example.com`, `*` or an address, no scheme, port or path"
            )
    if config.log_level.lower() not in {"debug", "info", "warning", "error", "critical"}:
        raise ValueError("`log_level` must be one of debug, info, warning, error, critical")


def _host_entry(entry: str) -> bool:
    """An `images.allowed_hosts` entry: `*`, a name, `*.` and a name, or an IP address."""
    if entry == "*" or re.fullmatch(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", entry):
        return True
    try:
        ipaddress.ip_address(entry)
    except ValueError:
        return False
    return True


def _decode(kind: type, value: Any) -> Any:
    if kind is Duration and value is None:  # `idle_ttl: null` is spelt as before: never
        return Duration.FOREVER
    return decode_units(kind, value)


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Parse YAML text into a Config; errors name the file and the key (and line for YAML)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        config = msgspec.convert(data, type=Config, strict=True, dec_hook=_decode)
        _check_values(config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def _describe(exc: msgspec.ValidationError) -> str:
    """msgspec says '... - at `$.pool.max_models`'; turn the JSON path into the YAML key."""
    message = str(exc)
    match = re.search(r" - at `\$(.*)`$", message)
    if not match:
        return message
    key = match.group(1).lstrip(".").replace("[...]", ".<entry>").replace("[", ".")
    key = key.replace("]", "").replace("'", "")
    head = message[: match.start()]
    return f"`{key}`: {head}" if key else head


def load_config(path: Path | None) -> Config:
    """Read and validate `path`; None means no file (all defaults)."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    return parse_config(text, source=str(path))
