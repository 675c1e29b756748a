"""One request's access-log line, metrics and activity record (the dashboard's ring and its
`request.started` / `request.finished` events).

Metric labels name registry ids only: a model name a client invented is counted under one
`(unknown)` series, so clients cannot grow `/metrics` without bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

from ..activity import PROMPT_CHARS
from ..daemon import Daemon
from ..engine import EmbeddingRequest, Finished, GenerationRequest
from ..pool import Lease
from ..status import ActivityRecord

log = logging.getLogger("mlxrouter.access")

UNKNOWN_MODEL = "(unknown)"

Surface = Literal["openai", "anthropic", "responses", "ollama", "embeddings"]


def surface_of(kind: str) -> Surface:
    """The API a request's kind belongs to (`CompletionSession`'s `kind`)."""
    if kind.startswith("ollama"):
        return "ollama"
    if kind == "messages":
        return "anthropic"
    if kind == "responses":
        return "responses"
    if kind == "embeddings":
        return "embeddings"
    return "openai"


class RequestRecord:
    """Model, status, tokens, latency and whether the request waited on a load. Prompts are
    logged only when `log_prompts` is on."""

    def __init__(self, daemon: Daemon, kind: str) -> None:
        self.daemon = daemon
        self.metrics = daemon.metrics
        self.kind = kind
        #: the metrics label: a registry id once the request resolved, else `(unknown)`
        self.model = UNKNOWN_MODEL
        self.started = time.perf_counter()
        self.loaded_now = False
        #: when the lease was held (loaded, or found loaded): Ollama's `load_duration` ends
        self.leased_at: float | None = None
        self._first_token_seen = False
        self._first_token_at: float | None = None
        self._prompt: str | None = None
        self._time = time.time()
        self.id = daemon.activity.request_id()

    def resolved(self, model_id: str) -> None:
        self.model = model_id
        self.daemon.activity.started(
            {
                "id": self.id,
                "time": round(self._time, 3),
                "surface": surface_of(self.kind),
                "kind": self.kind,
                "model": model_id,
            }
        )

    def log_prompt(self, generation: GenerationRequest | EmbeddingRequest) -> None:
        if self.daemon.config.log_prompts:
            if isinstance(generation, EmbeddingRequest):
                prompt: object = generation.inputs
            elif generation.messages is not None:
                prompt = generation.messages
            else:
                prompt = generation.prompt
            log.info(
                "%s model=%s prompt=%r", self.kind, self.model, prompt, extra=self._log_extra()
            )
            text = repr(prompt)  # the first prompt of a request with several
            self._prompt = self._prompt or text[:PROMPT_CHARS]

    def leased(self, lease: Lease) -> None:
        self.leased_at = time.perf_counter()
        self.loaded_now = lease.loaded_now
        if lease.loaded_now:
            self.metrics.loads.labels(lease.key).inc()
            self.metrics.load_seconds.observe(lease.info.load_seconds)

    def first_token(self) -> None:
        if not self._first_token_seen:
            self._first_token_seen = True
            elapsed = time.perf_counter() - self.started
            self._first_token_at = elapsed
            self.metrics.time_to_first_token.labels(self.model).observe(elapsed)

    def done(
        self, status: int, finished: Sequence[Finished] = (), error: str | None = None
    ) -> None:
        self.metrics.requests.labels(self.model, str(status)).inc()
        prompt = sum(f.prompt_tokens for f in finished)
        completion = sum(f.completion_tokens for f in finished)
        if finished:
            self.metrics.prompt_tokens.labels(self.model).inc(prompt)
            self.metrics.completion_tokens.labels(self.model).inc(completion)
        log.info(
            "%s model=%s status=%d tokens=%s latency=%.3fs load=%s",
            self.kind,
            self.model,
            status,
            f"{prompt}+{completion}" if finished else "-",
            time.perf_counter() - self.started,
            "yes" if self.loaded_now else "no",
            extra=self._log_extra(),
        )
        self.daemon.activity.finished(self._activity(status, finished, error))

    def _log_extra(self) -> dict[str, str]:
        # the dashboard's log filter reads the line's model from here, not from its text
        return {"model": self.model} if self.model != UNKNOWN_MODEL else {}

    def _activity(
        self, status: int, finished: Sequence[Finished], error: str | None
    ) -> ActivityRecord:
        completion = sum(f.completion_tokens for f in finished)
        generating = max((f.generation_seconds for f in finished), default=0.0)
        return ActivityRecord(
            id=self.id,
            time=round(self._time, 3),
            surface=surface_of(self.kind),
            kind=self.kind,
            model=self.model,
            status=status,
            prompt_tokens=sum(f.prompt_tokens for f in finished),
            cached_tokens=sum(f.cached_tokens for f in finished),
            completion_tokens=completion,
            ttft=None if self._first_token_at is None else round(self._first_token_at, 4),
            tokens_per_second=round(completion / generating, 2) if generating > 0 else None,
            latency=round(time.perf_counter() - self.started, 4),
            error=error,
            prompt=self._prompt,
        )
