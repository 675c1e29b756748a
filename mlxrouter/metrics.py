"""Prometheus metrics: counters the routes update as requests are served, and gauges read
from the pool (and MLX's memory figures, as the engine last published them) at scrape time.
Each app has its own registry, so several apps (tests) can live in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .pool import Pool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MlxFigures(Protocol):
    """MLX's memory figures in bytes (the engine's `MlxMemory`)."""

    @property
    def active_bytes(self) -> int: ...
    @property
    def cache_bytes(self) -> int: ...
    @property
    def peak_bytes(self) -> int: ...


class _PoolCollector(Collector):
    """Read the pool's own numbers when scraped, instead of mirroring them on every change."""

    def __init__(
        self,
        pool: Pool,
        memory: Callable[[], MlxFigures] | None,
        prompt_cache: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._pool = pool
        self._memory = memory
        self._prompt_cache = prompt_cache

    def collect(self) -> Iterator[Metric]:
        pool = self._pool
        entries = pool.entries()
        loaded = GaugeMetricFamily(
            "mlxrouter_loaded_bytes", "Bytes held by loaded entries", labels=["model"]
        )
        for entry in entries:
            loaded.add_metric([entry.key], entry.nbytes)
        yield loaded
        yield GaugeMetricFamily("mlxrouter_loaded_models", "Loaded entries", value=len(entries))
        yield GaugeMetricFamily(
            "mlxrouter_requests_in_flight",
            "Requests holding a lease",
            value=sum(e.in_flight for e in entries),
        )
        yield GaugeMetricFamily(
            "mlxrouter_queue_depth", "Requests waiting for room in the pool", value=pool.queue_depth
        )
        yield CounterMetricFamily(
            "mlxrouter_evictions", "Entries evicted to make room", value=pool.evictions
        )
        if self._memory is not None:
            mlx = self._memory()
            for name, help_text, value in (
                ("active", "Bytes MLX's live arrays hold", mlx.active_bytes),
                ("cache", "Bytes of freed buffers MLX keeps for reuse", mlx.cache_bytes),
                ("peak", "The most bytes MLX's arrays held since start", mlx.peak_bytes),
            ):
                yield GaugeMetricFamily(f"mlxrouter_mlx_{name}_bytes", help_text, value=value)
        if self._prompt_cache is not None:
            yield from prompt_cache_metrics(self._prompt_cache())


def prompt_cache_metrics(figures: Mapping[str, int]) -> Iterator[Metric]:
    """The engine's prompt-cache figures: requests that found a cached prefix, or none, per
    tier (a disk hit: the disk held a longer prefix than memory), and the disk cache's bytes."""
    for outcome, help_text in (
        ("hits", "Requests that found a cached prompt prefix, by tier"),
        ("misses", "Requests that found no cached prompt prefix, by tier"),
    ):
        family = CounterMetricFamily(
            f"mlxrouter_prompt_cache_{outcome}", help_text, labels=["tier"]
        )
        for tier in ("memory", "disk"):
            family.add_metric([tier], figures.get(f"{tier}_{outcome}", 0))
        yield family
    yield GaugeMetricFamily(
        "mlxrouter_prompt_cache_disk_bytes",
        "Bytes of prompt caches on disk",
        value=figures.get("disk_bytes", 0),
    )


class UpstreamMetrics:
    """Per remote upstream (labels are config names, so bounded): forwarded requests by how
    they ended, failures, the wait for the upstream's answer, and whether it is up."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "mlxrouter_upstream_requests",
            "Requests forwarded to an upstream, by its HTTP status (or unreachable, timeout, "
            "broken, cancelled)",
            ["upstream", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "mlxrouter_upstream_errors",
            "Forwarded requests that failed, by why",
            ["upstream", "status"],
            registry=registry,
        )
        self.response_seconds = Histogram(
            "mlxrouter_upstream_response_seconds",
            "From forwarding a request to the upstream's response headers",
            ["upstream"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.up = Gauge(
            "mlxrouter_upstream_up",
            "1 while the upstream answers its polls",
            ["upstream"],
            registry=registry,
        )


class Metrics:
    def __init__(
        self,
        pool: Pool,
        memory: Callable[[], MlxFigures] | None = None,
        prompt_cache: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mlxrouter_requests",
            "Completed requests by model and HTTP status",
            ["model", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "mlxrouter_prompt_tokens", "Prompt tokens processed", ["model"], registry=self.registry
        )
        self.completion_tokens = Counter(
            "mlxrouter_completion_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "mlxrouter_time_to_first_token_seconds",
            "From request arrival to the first generated text",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.loads = Counter(
            "mlxrouter_model_loads", "Model and adapter loads", ["model"], registry=self.registry
        )
        self.load_seconds = Histogram(
            "mlxrouter_model_load_seconds",
            "Time to load a model or adapter",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.upstreams = UpstreamMetrics(self.registry)
        self.registry.register(_PoolCollector(pool, memory, prompt_cache))

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data
