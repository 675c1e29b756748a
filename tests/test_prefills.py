"""Which prefill under way a request waits for (`Prefills`, plain data)."""

from __future__ import annotations

from mlxrouter.engine.prefix import MIN_SHARED_TOKENS, Prefills, shared_length

SYSTEM = list(range(100, 100 + 2 * MIN_SHARED_TOKENS))


def test_a_request_waits_for_the_prefill_sharing_most_of_its_prompt() -> None:
    prefills = Prefills()
    prefills.start(1, [*SYSTEM[:MIN_SHARED_TOKENS], 7, 8])
    prefills.start(2, [*SYSTEM, 9, 9])
    assert prefills.owner([*SYSTEM, 5, 6], cached=0) == 2


def test_a_few_shared_tokens_or_a_longer_cached_prefix_are_not_worth_waiting_for() -> None:
    prefills = Prefills()
    prefills.start(1, [*SYSTEM, 9, 9])
    header = SYSTEM[: MIN_SHARED_TOKENS - 1]
    assert prefills.owner([*header, 1, 2], cached=0) is None  # too few shared
    assert prefills.owner([*SYSTEM, *range(3 * len(SYSTEM))], cached=0) is None  # small share
    assert prefills.owner([*SYSTEM, 5], cached=len(SYSTEM) - 1) is None  # cached already


def test_the_prefill_s_last_token_is_not_counted() -> None:
    """A prefill's KV cache covers all but its prompt's last token (that one runs later)."""
    prefills = Prefills()
    prefills.start(1, SYSTEM)
    assert prefills.owner(SYSTEM, cached=0) == 1
    assert shared_length(SYSTEM, [*SYSTEM[:-1], 0]) == len(SYSTEM) - 1


def test_waiters_come_back_when_the_prefill_ends_or_everything_stops() -> None:
    prefills = Prefills()
    prefills.start(1, SYSTEM)
    prefills.start(2, SYSTEM)
    prefills.wait(1, "a")
    prefills.wait(1, "b")
    prefills.wait(2, "c")
    assert prefills.end(1) == ["a", "b"]
    assert prefills.end(1) == []
    assert prefills.owner(SYSTEM, cached=0) == 2
    assert prefills.clear() == ["c"]
    assert prefills.owner(SYSTEM, cached=0) is None
