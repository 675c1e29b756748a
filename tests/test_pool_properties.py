"""A hypothesis state machine over the pool: leases taken and released in any order, loads
that fail, ttl expiry and shrinking limits. Invariants: an entry in use is never evicted,
counts and bytes stay within the limits, and every lease is released."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mlxrouter.engine import LoadSpec, ModelInfo
from mlxrouter.errors import ModelLoadError, ModelTooLargeError, PoolBusyError
from mlxrouter.pool import LeaseRequest, Pool, PoolLimits

KEYS = ["a", "b", "c", "d"]
SIZES = {"a": 30, "b": 40, "c": 50, "d": 20}


class RecordingLoader:
    """Records effects; the machine checks none of them hit an entry in use."""

    def __init__(self, machine: PoolMachine) -> None:
        self.machine = machine
        self.loaded: set[str] = set()
        self.fail_next = False

    async def load(self, spec: LoadSpec) -> ModelInfo:
        await asyncio.sleep(0)
        if self.fail_next:
            self.fail_next = False
            raise ModelLoadError("boom")
        self.loaded.add(spec.key)
        return ModelInfo(
            nbytes=SIZES[spec.key],
            context_length=8,
            vocab_size=8,
            has_chat_template=False,
            load_seconds=0,
        )

    async def unload(self, key: str) -> None:
        assert key not in self.machine.held_keys(), f"{key} was evicted while in use"
        self.loaded.discard(key)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loader = RecordingLoader(self)
        self.limits = PoolLimits(max_models=2, max_bytes=100, queue_timeout=0)
        self.pool = Pool(self.loader, self.limits)
        self.held: list[tuple[str, Any]] = []

    def held_keys(self) -> set[str]:
        return {key for key, _ in self.held}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @rule(key=st.sampled_from(KEYS), fail=st.booleans(), pinned=st.booleans())
    def take_lease(self, key: str, fail: bool, pinned: bool) -> None:
        self.loader.fail_next = fail
        request = LeaseRequest(
            spec=LoadSpec(key, Path(key)), estimated_bytes=SIZES[key], pinned=pinned and key == "d"
        )
        manager = self.pool.lease(request)
        try:
            self.run(manager.__aenter__())
        except (PoolBusyError, ModelLoadError, ModelTooLargeError):
            return
        finally:
            self.loader.fail_next = False
        self.held.append((key, manager))

    @precondition(lambda self: self.held)
    @rule(index=st.integers(min_value=0))
    def release_lease(self, index: int) -> None:
        _, manager = self.held.pop(index % len(self.held))
        self.run(manager.__aexit__(None, None, None))

    @rule(seconds=st.floats(min_value=0, max_value=100))
    def expire(self, seconds: float) -> None:
        self.pool.limits = PoolLimits(
            max_models=self.limits.max_models, max_bytes=100, idle_ttl=10, queue_timeout=0
        )
        now = max((e.last_used for e in self.pool.entries()), default=0.0) + seconds
        self.run(self.pool.expire_idle(now=now))

    @rule(max_models=st.integers(min_value=1, max_value=3))
    def change_limits(self, max_models: int) -> None:
        self.limits = PoolLimits(max_models=max_models, max_bytes=100, queue_timeout=0)
        self.run(self.pool.apply_limits(self.limits))

    @invariant()
    def within_limits_unless_busy(self) -> None:
        entries = self.pool.entries()
        busy = {e.key for e in entries if e.in_flight}
        # A shrunk limit may be exceeded only by entries that are in use (they cannot go).
        assert len(entries) <= max(
            self.limits.max_models, len(busy) + sum(1 for e in entries if e.pinned)
        )
        assert sum(e.nbytes for e in entries) <= 100 or busy

    @invariant()
    def in_flight_matches_leases(self) -> None:
        counts = {e.key: e.in_flight for e in self.pool.entries()}
        for key in KEYS:
            assert counts.get(key, 0) == sum(1 for k, _ in self.held if k == key)

    @invariant()
    def pool_and_engine_agree(self) -> None:
        assert {e.key for e in self.pool.entries() if e.loaded} == self.loader.loaded

    def teardown(self) -> None:
        while self.held:
            _, manager = self.held.pop()
            self.run(manager.__aexit__(None, None, None))
        assert all(e.in_flight == 0 for e in self.pool.entries())
        with contextlib.suppress(Exception):
            self.run(self.pool.close())
        self.loop.close()


PoolMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
TestPoolStateMachine = PoolMachine.TestCase
