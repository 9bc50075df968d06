"""
The relay's book of ids a clinic is known to read (issue 19 finding 1):
limits per address and in all, forgetting ids nobody reads, and the saved
form, on a clock the test moves.
"""

from __future__ import annotations

import pytest

from medimage_tx.relay_store.queue import QuotaFull, RelayQueue
from medimage_tx.relay_store.known_ids import IDS_PER_ADDRESS, KNOWN_SECONDS, RESTAMP_SECONDS, KnownIds


def ids(n: int, prefix: str = "KnownPairingId") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_each_address_makes_only_so_many_ids_known_and_known_ids_stay_readable_by_all():
    now = [1000.0]
    book = KnownIds(lambda: now[0])
    first = ids(IDS_PER_ADDRESS + 1)
    assert [book.note(i, "203.0.113.1") for i in first] == ["new"] * IDS_PER_ADDRESS + [None]
    assert first[-1] not in book
    # Another address may still read an id that is known (and may make its own known).
    assert book.note(first[0], "2001:db8:1:2::/64") == "known"
    assert book.note(first[-1], "2001:db8:1:2::/64") == "new"


def test_a_known_id_is_resaved_once_a_day_and_forgotten_after_a_month_unread():
    now = [0.0]
    book = KnownIds(lambda: now[0])
    (clinic,) = ids(1)
    assert book.note(clinic, "a") == "new"
    now[0] += RESTAMP_SECONDS - 1
    assert book.note(clinic, "a") == "known"
    now[0] += 1
    assert book.note(clinic, "a") == "restamped"
    now[0] += KNOWN_SECONDS - 1
    assert book.forget_unread(now[0] - KNOWN_SECONDS) == []
    now[0] += 2
    assert book.forget_unread(now[0] - KNOWN_SECONDS) == [clinic]
    # Its address has its slot back.
    assert [book.note(i, "a") for i in ids(IDS_PER_ADDRESS, "OtherPairingId")] == ["new"] * IDS_PER_ADDRESS


def test_the_book_survives_a_restart_without_what_is_too_old_or_malformed():
    now = [10 * KNOWN_SECONDS]
    book = KnownIds(lambda: now[0])
    kept, old = ids(2)
    book.note(old, "a")
    now[0] += KNOWN_SECONDS
    book.note(kept, "a")
    saved = book.snapshot()
    saved["known"] += [["../../etc", now[0], "a"], ["ShortId", now[0], "a"], "junk", [kept]]
    restored = []
    again = KnownIds(lambda: now[0] + 1, on_known=restored.append)
    again.restore(saved)
    assert restored == [kept] and kept in again and old not in again


def test_unknown_ids_share_the_pool_and_known_ids_leave_it():
    queue = RelayQueue(now=lambda: 0.0)
    queue.reserve("JunkPairingId00001", 600, 10**6, 10**6, unknown_limit=1000)
    with pytest.raises(QuotaFull) as full:
        queue.reserve("JunkPairingId00002", 600, 10**6, 10**6, unknown_limit=1000)
    assert full.value.scope == "unknown"
    clinic = "RealClinicPairing1"
    queue.reserve(clinic, 300, 10**6, 10**6, unknown_limit=1000)  # before its PC polled: in the pool
    assert queue.unknown_bytes() == 900
    queue.set_known(clinic, True)
    assert queue.unknown_bytes() == 600
    queue.reserve(clinic, 5000, 10**6, 10**6, unknown_limit=1000)  # outside the pool now
    assert queue.unknown_bytes() == 600 and queue.total_bytes() == 5900
    queue.set_known(clinic, False)
    assert queue.unknown_bytes() == 5900
