"""Domain errors. They know nothing about HTTP; `api.errors` maps each to a status and an
OpenAI error body. Messages are shown to clients, so they never carry filesystem paths."""

from __future__ import annotations


class MlxRouterError(Exception):
    """Base of every error this package raises on purpose."""

    #: OpenAI-style `type` and `code` for the error body; `api.errors` maps these to statuses.
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(MlxRouterError):
    """The config file is unreadable, not YAML, or has an unknown key or a wrong type."""

    code = "config_error"


class ModelNotFoundError(MlxRouterError):
    """A request named an id that is not in the registry."""

    type = "invalid_request_error"
    code = "model_not_found"


class InvalidRequestError(MlxRouterError):
    """A request field is out of range or inconsistent; `param` names it."""

    type = "invalid_request_error"
    code = "invalid_value"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class ModelLoadError(MlxRouterError):
    """Loading a registered model failed (corrupt weights, missing tokenizer...)."""

    code = "model_load_failed"


class PoolBusyError(MlxRouterError):
    """Nothing could be evicted to make room within the wait limit; retry later."""

    code = "pool_busy"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EntryBusyError(MlxRouterError):
    """An unload was asked for an entry that is serving requests."""

    code = "model_busy"


class ModelTooLargeError(MlxRouterError):
    """The model alone is larger than the whole pool memory budget."""

    code = "model_too_large"


class EngineError(MlxRouterError):
    """The generation thread failed while serving a request."""

    code = "engine_error"


class ShuttingDownError(MlxRouterError):
    """The daemon is draining and accepts no new requests."""

    code = "shutting_down"


class GGUFConversionError(MlxRouterError):
    """A GGUF file cannot be converted (unsupported architecture or tensor type)."""

    code = "gguf_unsupported"


class ClientDisconnectedError(MlxRouterError):
    """The client closed the connection before its answer was ready; generation stopped."""

    type = "invalid_request_error"
    code = "client_closed_request"
