"""
The relay queue's bookkeeping on its own (PROTOCOL.md A4, B4), on a fake
clock: order, leases, confirmation, give-back, and what it reports.
"""

from __future__ import annotations

from twisted.internet.task import Clock

import documented
from medimage_tx.relay_queue import RelayQueue

A, B = "PairedIdNumberOne01", "PairedIdNumberTwo02"


def queue(clock: Clock) -> tuple[RelayQueue, list[str]]:
    woken: list[str] = []
    return RelayQueue(now=clock.seconds, on_available=woken.append), woken


def test_oldest_first_per_id_and_a_repeated_put_is_one_photo():
    q, woken = queue(Clock())
    first = q.put(A, f"{A}/P/1.jpg", 10)
    q.put(B, f"{B}/P/1.jpg", 20)
    q.put(A, f"{A}/P/2.jpg", 30)
    assert q.put(A, f"{A}/P/1.jpg", 10) is first
    assert woken == [A, B, A]
    assert q.peek(A).relative == f"{A}/P/1.jpg" and q.peek(A).file_name == f"/{A}/P/1.jpg"
    assert q.queued_bytes(A) == 40 and q.queued_bytes(B) == 20 and q.queued_bytes("nobody") == 0
    assert q.take(A).relative == f"{A}/P/1.jpg"
    assert q.peek(A).relative == f"{A}/P/2.jpg"
    assert q.take(A).relative == f"{A}/P/2.jpg"
    assert q.take(A) is None and q.peek(A) is None and q.lease(A) is None
    assert q.holds(f"{B}/P/1.jpg") and not q.holds(f"{A}/P/1.jpg")


def test_lease_hides_for_the_documented_time_and_the_receipt_confirms():
    clock = Clock()
    q, woken = queue(clock)
    q.put(A, f"{A}/x.jpg", 5)
    q.put(A, f"{A}/y.jpg", 6)
    leased = q.lease(A)
    assert leased.relative == f"{A}/x.jpg" and len(leased.receipt) >= 16
    assert q.next_expiry() == documented.LEASE_SECONDS
    assert q.peek(A).relative == f"{A}/y.jpg"  # the leased one is hidden, the next is not
    assert q.queued_bytes(A) == 11 and q.holds(f"{A}/x.jpg")  # leased still counts
    clock.advance(documented.LEASE_SECONDS - 1)
    assert q.requeue_expired() == [] and q.lease(A).relative == f"{A}/y.jpg"
    clock.advance(1)
    woken.clear()
    assert q.requeue_expired() == [A] and woken == [A]
    assert q.peek(A).relative == f"{A}/x.jpg"  # back, in its old place
    assert q.confirm(A, "not-a-receipt") is None and q.confirm(B, leased.receipt) is None
    assert q.confirm(A, leased.receipt).relative == f"{A}/x.jpg"  # still good: nobody leased it since
    assert not q.holds(f"{A}/x.jpg") and q.queued_bytes(A) == 6


def test_a_new_lease_replaces_the_old_receipt():
    clock = Clock()
    q, _ = queue(clock)
    q.put(A, f"{A}/x.jpg", 5)
    old = q.lease(A).receipt
    clock.advance(documented.LEASE_SECONDS)
    new = q.lease(A).receipt
    assert new != old
    assert q.confirm(A, old) is None
    assert q.confirm(A, new) is not None and q.peek(A) is None and q.next_expiry() is None


def test_give_back_restores_the_order_and_wakes_readers():
    q, woken = queue(Clock())
    for name in ("1", "2", "3"):
        q.put(A, f"{A}/{name}.jpg", 1)
    taken = q.take(A)
    woken.clear()
    q.give_back(taken)
    assert woken == [A]
    assert [q.take(A).relative for _ in range(3)] == [f"{A}/1.jpg", f"{A}/2.jpg", f"{A}/3.jpg"]
    q.give_back(taken)
    woken.clear()
    q.give_back(taken)  # already back: nothing changes
    assert woken == [] and q.take(A).relative == f"{A}/1.jpg" and q.take(A) is None


def test_next_expiry_is_the_soonest_lease():
    clock = Clock()
    q, _ = queue(clock)
    q.put(A, f"{A}/x.jpg", 1)
    q.put(B, f"{B}/x.jpg", 1)
    assert q.next_expiry() is None
    q.lease(A)
    clock.advance(10)
    q.lease(B)
    assert q.next_expiry() == documented.LEASE_SECONDS
