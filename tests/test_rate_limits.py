"""
The fixed-bucket limiter behind the pairing limits: exact limits over any
window, bounded memory, saved and restored counts.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

from medimage_tx.errors import Rejected, TryLater
from medimage_tx.relay_store.pairing_codes import (
    ISSUES_IN_TOTAL,
    ISSUES_PER_ADDRESS,
    MAX_LIVE_CODES,
    PairingBook,
)
from medimage_tx.relay_store.rate_limits import WindowLimiter


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 200, allow_nan=False), st.sampled_from("abc")), max_size=120))
def test_no_window_ever_holds_more_than_the_limits(events):
    """
    Whatever the times, any interval of C{window} seconds holds at most
    C{in_total} allowed events, and at most C{per_key} of one key.
    """
    clock = Clock()
    limiter = WindowLimiter(clock.seconds, per_key=4, in_total=7, window=60, buckets=6)
    allowed = []
    now = 0.0
    for step, key in events:
        now += step
        clock.advance(now - clock.seconds())
        if limiter.take(key):
            allowed.append((now, key))
    for start, _ in allowed:
        inside = [(t, k) for t, k in allowed if start <= t < start + 60]
        assert len(inside) <= 7
        for key in "abc":
            assert sum(1 for _, k in inside if k == key) <= 4


def test_memory_is_bounded_whatever_the_rate():
    clock = Clock()
    limiter = WindowLimiter(clock.seconds, per_key=10, in_total=100)
    for n in range(100_000):
        limiter.take(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        clock.advance(0.01)
    assert limiter.keys() <= 100
    assert limiter.refused == 100_000 - 100
    assert len(limiter.snapshot()["total"]) <= limiter.buckets + 1


def test_counts_survive_a_restart_and_retry_after_says_when():
    clock = Clock()
    clock.advance(1_800_000_000)  # wall-clock seconds, as on a relay
    limiter = WindowLimiter(clock.seconds, per_key=2, in_total=3)
    assert limiter.take("a") and limiter.take("a") and not limiter.take("a")
    assert limiter.take("b") and not limiter.take("c")
    saved = limiter.snapshot()
    restarted = WindowLimiter(clock.seconds, per_key=2, in_total=3)
    restarted.restore(saved)
    assert not restarted.take("c")
    # Saved with another bucket size: nothing is lost, all counted now.
    resized = WindowLimiter(clock.seconds, per_key=2, in_total=3, buckets=12)
    resized.restore(saved)
    assert not resized.take("a")
    wait = restarted.retry_after("c")
    assert 3600 <= wait <= 3660
    clock.advance(wait - 1)
    assert not restarted.take("c")
    clock.advance(1)
    assert restarted.take("c")


def test_a_match_is_given_back():
    clock = Clock()
    limiter = WindowLimiter(clock.seconds, per_key=1, in_total=5)
    assert limiter.take("phone")
    limiter.give_back("phone")
    assert limiter.take("phone") and limiter.keys() == 1


def test_issuing_is_limited_per_address_in_total_and_in_live_codes():
    clock = Clock()
    book = PairingBook(clock.seconds)
    for _ in range(ISSUES_PER_ADDRESS):
        book.issue("", "https://relay", "NZ", "clinic")
    with pytest.raises(TryLater) as refused:
        book.issue("", "https://relay", "NZ", "clinic")
    assert refused.value.retry_after >= 3600
    for n in range(ISSUES_IN_TOTAL - ISSUES_PER_ADDRESS):
        book.issue("", "https://relay", "NZ", f"other{n}")
    with pytest.raises(TryLater):
        book.issue("", "https://relay", "NZ", "a new clinic")
    assert book.live_codes() == min(ISSUES_IN_TOTAL, MAX_LIVE_CODES)
    with pytest.raises(Rejected):
        book.issue("x" * 65, "https://relay", "NZ", "someone")
    clock.advance(3600 + 61)
    assert book.issue("", "https://relay", "NZ", "a new clinic").code
