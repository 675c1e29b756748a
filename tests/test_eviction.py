"""The eviction choice is pure: plain data in, keys out."""

from __future__ import annotations

from mlxrouter.eviction import Resident, choose_victims, over_limits


def r(
    key: str, used: float, *, nbytes: int = 10, in_use: bool = False, pinned: bool = False
) -> Resident:
    return Resident(key=key, nbytes=nbytes, last_used=used, in_use=in_use, pinned=pinned)


def test_fits_without_eviction() -> None:
    assert choose_victims([r("a", 1)], incoming_bytes=10, max_models=2, max_bytes=None) == []


def test_evicts_least_recently_used_idle_entry() -> None:
    residents = [r("new", 5), r("old", 1)]
    assert choose_victims(residents, incoming_bytes=1, max_models=2, max_bytes=None) == ["old"]


def test_never_evicts_in_use_or_pinned() -> None:
    residents = [r("busy", 1, in_use=True), r("pinned", 2, pinned=True), r("idle", 3)]
    assert choose_victims(residents, incoming_bytes=1, max_models=3, max_bytes=None) == ["idle"]
    assert choose_victims(residents[:2], incoming_bytes=1, max_models=2, max_bytes=None) is None


def test_byte_budget_evicts_until_it_fits() -> None:
    residents = [r("a", 1, nbytes=40), r("b", 2, nbytes=40), r("c", 3, nbytes=10)]
    assert choose_victims(residents, incoming_bytes=50, max_models=9, max_bytes=100) == ["a"]
    assert choose_victims(residents, incoming_bytes=91, max_models=9, max_bytes=100) == [
        "a",
        "b",
        "c",
    ]
    assert choose_victims(residents, incoming_bytes=101, max_models=9, max_bytes=100) is None


def test_shrunk_limits_evict_idle_lru_first() -> None:
    residents = [r("a", 3), r("b", 1), r("c", 2, in_use=True)]
    assert over_limits(residents, max_models=1, max_bytes=None) == ["b", "a"]
    assert over_limits(residents, max_models=3, max_bytes=None) == []
