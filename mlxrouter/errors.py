"""Domain errors. They know nothing about HTTP; `api.errors` maps each to a status and an
OpenAI error body. Messages are shown to clients, so they never carry filesystem paths.

Each error declares its OpenAI-style `code` (and `type`, when it is the client's fault) as
class keywords: `class PoolBusyError(MlxRouterError, code="pool_busy")`."""

from __future__ import annotations

from typing import Any, ClassVar

#: the OpenAI `type` of errors that are the request's fault
REQUEST = "invalid_request_error"


class MlxRouterError(Exception):
    """Base of every error this package raises on purpose."""

    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init_subclass__(
        cls, *, code: str | None = None, type: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.code = code if code is not None else cls.code
        cls.type = type if type is not None else cls.type

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(MlxRouterError, code="config_error"):
    """The config file is unreadable, not YAML, or has an unknown key or a wrong type."""


class ModelNotFoundError(MlxRouterError, type=REQUEST, code="model_not_found"):
    """A request named an id that is not in the registry."""


class InvalidRequestError(MlxRouterError, type=REQUEST, code="invalid_value"):
    """A request field is out of range or inconsistent; `param` names it."""


class UnsupportedModelError(InvalidRequestError, code="model_not_supported"):
    """The model is registered but its architecture cannot be run here."""


class ContextLengthExceededError(InvalidRequestError, code="context_length_exceeded"):
    """The prompt (with `max_tokens`) does not fit the model's context."""


class ClientDisconnectedError(MlxRouterError, type=REQUEST, code="client_closed_request"):
    """The client closed the connection before its answer was ready; generation stopped."""


class ModelLoadError(MlxRouterError, code="model_load_failed"):
    """Loading a registered model failed (corrupt weights, missing tokenizer...)."""


class PoolBusyError(MlxRouterError, code="pool_busy"):
    """Nothing could be evicted to make room within the wait limit; retry later."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EntryBusyError(MlxRouterError, code="model_busy"):
    """An unload was asked for an entry that is serving requests."""


class ModelTooLargeError(MlxRouterError, code="model_too_large"):
    """The model alone is larger than the whole pool memory budget."""


class EngineError(MlxRouterError, code="engine_error"):
    """The generation thread failed while serving a request."""


class ShuttingDownError(MlxRouterError, code="shutting_down"):
    """The daemon is draining and accepts no new requests."""


class GGUFConversionError(MlxRouterError, code="gguf_unsupported"):
    """A GGUF file cannot be converted (unsupported architecture or tensor type)."""


class UpstreamError(MlxRouterError, code="upstream_error"):
    """A remote upstream failed the request: it answered with an error of its own, or cut
    its answer short. Messages name the upstream (never its URL or key)."""


class UpstreamUnavailableError(UpstreamError, code="upstream_unavailable"):
    """A remote upstream could not be reached (refused, unresolvable, connection lost)."""


class UpstreamTimeoutError(UpstreamError, code="upstream_timeout"):
    """A remote upstream did not answer (or send its next chunk) within its `timeout`."""


class UpstreamRejectedError(InvalidRequestError, code="upstream_rejected"):
    """A remote upstream refused the request as invalid (its 4xx); its message is passed on."""


class UpstreamBusyError(PoolBusyError, code="upstream_busy"):
    """A remote upstream answered 429 or 503: it is busy; retry later."""
