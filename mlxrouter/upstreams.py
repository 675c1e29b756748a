"""Remote upstreams: other OpenAI-compatible servers whose models this daemon serves too.

`Upstreams` follows the config's `upstreams:` list: one httpx client and one health loop per
upstream, polling its `/models` every `health_interval` seconds. Each poll refreshes the
upstream's model list and its up/down state; a change calls `on_change`, and the daemon swaps
a registry holding the new remote entries in (`registry.with_remote`). A request that cannot
reach an upstream marks it down at once; the next good poll brings it back. Requests go out
through `remote.forward`. No MLX here; the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .config import UpstreamConfig
from .discovery import FoundModel
from .engine import GenerationRequest, ModelInfo
from .errors import UpstreamUnavailableError
from .pool import Lease
from .registry import RegistryEntry, RemoteModel
from .remote import Outcome, RemoteStream, forward

if TYPE_CHECKING:
    from .metrics import UpstreamMetrics

log = logging.getLogger(__name__)

#: the longest a health poll waits (an upstream's own `timeout` if shorter)
POLL_TIMEOUT = 5.0


@dataclass(slots=True)
class UpstreamState:
    """What the last poll (or request) found out about one upstream."""

    #: None until the first poll has answered or failed
    up: bool | None = None
    #: why it is down, in words (no URL, no key)
    reason: str = ""
    #: its `/models` entries as it sent them (filtered by `models:`)
    cards: tuple[dict[str, Any], ...] = ()
    #: requests forwarded to it and not finished
    in_flight: int = 0


@dataclass(slots=True)
class _Upstream:
    config: UpstreamConfig
    client: httpx.AsyncClient
    state: UpstreamState = field(default_factory=UpstreamState)
    poller: asyncio.Task[None] | None = None
    #: when this daemon first configured it: the `created` of cards that name none
    since: int = field(default_factory=lambda: int(time.time()))

    @property
    def name(self) -> str:
        return self.config.name


class Upstreams:
    """Event-loop side. `apply(configs)` follows config edits; `stop()` closes everything."""

    def __init__(
        self, on_change: Callable[[], None], metrics: UpstreamMetrics | None = None
    ) -> None:
        self._on_change = on_change
        self._metrics = metrics
        self._upstreams: dict[str, _Upstream] = {}
        self._running = False

    # ---- life ------------------------------------------------------------------------------

    async def start(self, configs: Sequence[UpstreamConfig]) -> None:
        """Poll every upstream once (bounded by its poll timeout), then keep polling."""
        self._running = True
        await self.apply(configs)

    async def apply(self, configs: Sequence[UpstreamConfig]) -> None:
        """Follow the config: new and changed upstreams are polled now, removed ones closed."""
        wanted = {config.name: config for config in configs}
        stale = [u for name, u in self._upstreams.items() if wanted.get(name) != u.config]
        for upstream in stale:
            del self._upstreams[upstream.config.name]
            await self._close(upstream)
        fresh = [
            _Upstream(config, _client(config))
            for name, config in wanted.items()
            if name not in self._upstreams
        ]
        kept = self._upstreams
        self._upstreams = {}
        for name in wanted:  # config order: the first upstream listing an id serves it
            self._upstreams[name] = kept.get(name) or next(u for u in fresh if u.name == name)
        if stale:
            self._on_change()
        if not self._running or not fresh:
            return
        await asyncio.gather(*(self._poll(upstream) for upstream in fresh))
        for upstream in fresh:
            upstream.poller = asyncio.create_task(
                self._poll_forever(upstream), name=f"upstream-health-{upstream.config.name}"
            )

    async def stop(self) -> None:
        self._running = False
        upstreams, self._upstreams = list(self._upstreams.values()), {}
        for upstream in upstreams:
            await self._close(upstream)

    async def _close(self, upstream: _Upstream) -> None:
        if upstream.poller is not None:
            upstream.poller.cancel()
            await asyncio.gather(upstream.poller, return_exceptions=True)
        await upstream.client.aclose()
        if self._metrics is not None:  # a removed upstream leaves no series behind
            with contextlib.suppress(KeyError):
                self._metrics.up.remove(upstream.name)

    # ---- what they serve -------------------------------------------------------------------

    def entries(self) -> list[RegistryEntry]:
        """Every upstream's ids as registry entries (prefixed, in config order)."""
        return [entry for u in self._upstreams.values() for entry in _entries(u)]

    def reasons(self) -> list[str]:
        """Why upstreams are down, for `/health`."""
        return [
            f"upstream `{name}` is down: {u.state.reason}"
            for name, u in self._upstreams.items()
            if u.state.up is False
        ]

    def state(self, name: str) -> UpstreamState | None:
        upstream = self._upstreams.get(name)
        return upstream.state if upstream else None

    @property
    def in_flight(self) -> int:
        return sum(u.state.in_flight for u in self._upstreams.values())

    # ---- forwarding ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, remote: RemoteModel) -> AsyncIterator[None]:
        """A remote lease: counts the request in flight (the drain waits for it)."""
        upstream = self._upstreams.get(remote.upstream)
        if upstream is None:
            raise UpstreamUnavailableError(f"The upstream `{remote.upstream}` was removed")
        upstream.state.in_flight += 1
        try:
            yield
        finally:
            upstream.state.in_flight -= 1

    def generate(
        self, remote: RemoteModel, request: GenerationRequest, *, context: int | None = None
    ) -> RemoteStream:
        """Forward `request`; `context` is the id's context length, if its card names one."""
        upstream = self._upstreams.get(remote.upstream)
        if upstream is None:
            raise UpstreamUnavailableError(f"The upstream `{remote.upstream}` was removed")
        return forward(
            upstream.client,
            remote.upstream,
            remote.upstream_id,
            request,
            self._report,
            context=context,
        )

    def _report(self, outcome: Outcome) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.requests.labels(outcome.upstream, outcome.status).inc()
            failed = not outcome.status.isdigit() or int(outcome.status) >= 400
            if failed and outcome.status != "cancelled":
                metrics.errors.labels(outcome.upstream, outcome.status).inc()
            if outcome.response_seconds is not None:
                metrics.response_seconds.labels(outcome.upstream).observe(outcome.response_seconds)
        upstream = self._upstreams.get(outcome.upstream)
        if outcome.unreachable and upstream is not None and upstream.state.up is not False:
            # Known at once, not at the next poll: /v1/models and /health say so now.
            self._set(upstream, up=False, reason="unreachable", cards=upstream.state.cards)

    # ---- health ----------------------------------------------------------------------------

    async def _poll_forever(self, upstream: _Upstream) -> None:
        while True:
            await asyncio.sleep(upstream.config.health_interval)
            await self._poll(upstream)

    async def _poll(self, upstream: _Upstream) -> None:
        config = upstream.config
        timeout = min(config.timeout, POLL_TIMEOUT)
        try:
            response = await upstream.client.get("models", timeout=timeout)
        except httpx.TimeoutException:
            self._down(upstream, f"no answer within {timeout:g}s")
            return
        except httpx.HTTPError as exc:
            refused = isinstance(exc, httpx.ConnectError)
            self._down(upstream, "unreachable" if refused else "the connection failed")
            return
        if response.status_code != 200:
            self._down(upstream, f"its /models answered {response.status_code}")
            return
        try:
            data = response.json().get("data")
            cards = tuple(card for card in data if isinstance(card, dict) and card.get("id"))
        except (ValueError, AttributeError, TypeError):
            self._down(upstream, "its /models answer is not an OpenAI model list")
            return
        if config.models is not None:
            cards = tuple(card for card in cards if card["id"] in config.models)
        self._set(upstream, up=True, reason="", cards=cards)

    def _down(self, upstream: _Upstream, reason: str) -> None:
        # The last known list stays, shown as unavailable, so clients still see the ids.
        self._set(upstream, up=False, reason=reason, cards=upstream.state.cards)

    def _set(
        self, upstream: _Upstream, *, up: bool, reason: str, cards: tuple[dict[str, Any], ...]
    ) -> None:
        state = upstream.state
        if self._metrics is not None:
            self._metrics.up.labels(upstream.name).set(1 if up else 0)
        if (state.up, state.cards) == (up, cards):
            state.reason = reason
            return
        if state.up is not up:
            name = upstream.config.name
            if up:
                log.info("upstream %s is up: %d models", name, len(cards))
            else:
                log.warning("upstream %s is down: %s", name, reason)
        state.up, state.reason, state.cards = up, reason, cards
        if self._upstreams.get(upstream.config.name) is upstream:
            self._on_change()


def _client(config: UpstreamConfig) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    return httpx.AsyncClient(
        base_url=config.url.rstrip("/") + "/",
        headers=headers,
        # `timeout` bounds connecting, the wait for an answer and each gap between chunks.
        timeout=httpx.Timeout(config.timeout),
        # An upstream is a server we chose, not the environment's proxy's business.
        trust_env=False,
    )


def _entries(upstream: _Upstream) -> list[RegistryEntry]:
    config, state = upstream.config, upstream.state
    if state.cards:
        cards: Sequence[dict[str, Any]] = state.cards
    else:  # never reached yet: the ids the config names, as unavailable
        cards = [{"id": model} for model in config.models or ()]
    ids = {str(card["id"]) for card in cards}
    entries = []
    for card in cards:
        upstream_id = str(card["id"])
        base = card.get("base") or card.get("parent")
        remote = RemoteModel(
            upstream=config.name,
            upstream_id=upstream_id,
            available=bool(state.up) and card.get("available", True) is not False,
            loaded=card.get("loaded", True) is not False,
        )
        entries.append(
            RegistryEntry(
                id=config.prefix + upstream_id,
                found=_found(config, card, upstream.since),
                source="remote",
                base=config.prefix + base if isinstance(base, str) and base in ids else None,
                remote=remote,
            )
        )
    return entries


def _found(config: UpstreamConfig, card: dict[str, Any], since: int) -> FoundModel:
    """What the upstream's card says, in the registry's terms (no folder: an empty path)."""
    context = card.get("context_length") or card.get("max_model_len")
    capabilities = card.get("capabilities")
    if not isinstance(capabilities, list):
        capabilities = ["completion", "chat"]
    return FoundModel(
        id=config.prefix + str(card["id"]),
        path=Path(),
        kind="model",
        base_ref=None,
        created=_int(card.get("created")) or since,
        owned_by=str(card.get("owned_by") or config.name),
        context_length=_int(context),
        size_bytes=_int(card.get("size_bytes")) or 0,
        fingerprint=f"remote:{config.name}:{card['id']}",
        trusts_code=False,
        capabilities=tuple(str(c) for c in capabilities),
        quantization_bits=_int(card.get("quantization_bits")),
        architecture=card.get("architecture")
        if isinstance(card.get("architecture"), str)
        else None,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class RemoteLease(Lease):
    """A remote id's lease: nothing is loaded here; generation goes to its upstream."""

    remote: RemoteModel

    @classmethod
    def of(cls, entry: RegistryEntry, remote: RemoteModel) -> RemoteLease:
        info = ModelInfo(
            nbytes=0,
            context_length=entry.found.context_length,
            vocab_size=0,
            has_chat_template="chat" in entry.found.capabilities,
            load_seconds=0.0,
        )
        return cls(key=entry.id, info=info, loaded_now=False, remote=remote)
