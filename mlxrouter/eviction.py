"""Which loaded entries to evict so a new one fits: a pure decision over plain data.

Imports nothing from the rest of the package, logs nothing, and is tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resident:
    """A loaded (or loading) entry as the eviction choice sees it."""

    key: str
    nbytes: int
    last_used: float
    in_use: bool  # requests in flight, or still loading: never evicted
    pinned: bool = False


def choose_victims(
    residents: Sequence[Resident],
    *,
    incoming_bytes: int,
    max_models: int,
    max_bytes: int | None,
) -> list[str] | None:
    """Keys to evict, least recently used first, so that one more entry of `incoming_bytes`
    fits both limits; [] when it fits already; None when evicting every idle entry would still
    not make room (the caller waits or refuses)."""
    count = len(residents)
    used = sum(r.nbytes for r in residents)

    def fits(count: int, used: int) -> bool:
        return count + 1 <= max_models and (max_bytes is None or used + incoming_bytes <= max_bytes)

    victims: list[str] = []
    idle = sorted(
        (r for r in residents if not r.in_use and not r.pinned), key=lambda r: r.last_used
    )
    for resident in idle:
        if fits(count, used):
            break
        victims.append(resident.key)
        count -= 1
        used -= resident.nbytes
    return victims if fits(count, used) else None


def over_limits(
    residents: Sequence[Resident], *, max_models: int, max_bytes: int | None
) -> list[str]:
    """Idle entries to evict when the limits shrink (a config edit), LRU first."""
    count = len(residents)
    used = sum(r.nbytes for r in residents)
    victims: list[str] = []
    idle = sorted(
        (r for r in residents if not r.in_use and not r.pinned), key=lambda r: r.last_used
    )
    for resident in idle:
        if count <= max_models and (max_bytes is None or used <= max_bytes):
            break
        victims.append(resident.key)
        count -= 1
        used -= resident.nbytes
    return victims
