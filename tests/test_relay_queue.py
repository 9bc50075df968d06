"""
The relay queue's bookkeeping on its own (PROTOCOL.md A4, B4), on a fake
clock: order, leases, confirmation, give-back, and what it reports; then
reservations and expiry, and a model check of its indexes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock

import documented
from medimage_tx.relay_store.queue import QuotaFull, RelayQueue

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


def make_queue():
    now = [0.0]
    woken = []
    queue = RelayQueue(now=lambda: now[0], lease_seconds=10, on_available=woken.append)
    return queue, now, woken


def test_leases_hide_expire_and_only_the_newest_receipt_confirms():
    queue, now, woken = make_queue()
    first = queue.put("A" * 16, "A/1.jpg", 5)
    queue.put("A" * 16, "A/2.jpg", 5)
    leased = queue.lease("A" * 16)
    assert leased is first and queue.peek("A" * 16).relative == "A/2.jpg"
    old_receipt = leased.receipt
    now[0] = 10
    assert queue.requeue_expired() == ["A" * 16]
    assert queue.peek("A" * 16) is first  # back in its place, oldest first
    again = queue.lease("A" * 16)
    assert queue.confirm("A" * 16, old_receipt) is None
    assert queue.confirm("B" * 16, again.receipt) is None  # another id's receipt
    assert queue.confirm("A" * 16, again.receipt) is first
    assert not queue.holds("A/1.jpg") and queue.queued_bytes("A" * 16) == 5


def test_a_receipt_still_confirms_after_its_lease_ran_out():
    queue, now, _ = make_queue()
    photo = queue.put("A" * 16, "A/1.jpg", 5)
    receipt = queue.lease("A" * 16).receipt
    now[0] = 11
    assert queue.peek("A" * 16) is photo
    assert queue.confirm("A" * 16, receipt) is photo
    assert queue.peek("A" * 16) is None and len(queue) == 0 and queue.total_bytes() == 0


def test_reservations_hold_room_until_put_or_release():
    queue, _, _ = make_queue()
    a = queue.reserve("A" * 16, 60, per_id_limit=100, total_limit=150)
    with pytest.raises(QuotaFull) as full:
        queue.reserve("A" * 16, 60, per_id_limit=100, total_limit=150)
    assert full.value.scope == "pairing"
    b = queue.reserve("B" * 16, 80, per_id_limit=100, total_limit=150)
    with pytest.raises(QuotaFull) as full:
        queue.reserve("C" * 16, 20, per_id_limit=100, total_limit=150)
    assert full.value.scope == "relay"
    queue.put("A" * 16, "A/1.jpg", 60, a)
    queue.put("A" * 16, "A/1.jpg", 60, queue.reserve("A" * 16, 10, 100, 150))  # a retry: released
    queue.release(b)
    queue.release(b)  # twice is once
    assert (queue.queued_bytes("A" * 16), queue.queued_bytes("B" * 16), queue.total_bytes()) == (60, 0, 60)


def test_expiry_removes_old_waiting_photos_but_not_leased_ones():
    queue, now, _ = make_queue()
    queue.put("A" * 16, "A/old.jpg", 1)
    queue.put("B" * 16, "B/old.jpg", 1)
    leased = queue.lease("B" * 16)
    now[0] = 5
    queue.put("A" * 16, "A/new.jpg", 1)
    expired = queue.expire_older_than(1)
    assert [p.relative for p in expired] == ["A/old.jpg"]
    assert queue.holds("B/old.jpg") and queue.confirm("B" * 16, leased.receipt) is leased
    assert [queue.peek("A" * 16).relative] == ["A/new.jpg"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "lease", "take", "confirm", "tick", "expire"]),
                          st.integers(0, 2)), max_size=60))
def test_indexes_agree_with_a_plain_model(steps):
    """
    Whatever happens, a read gives the oldest readable photo of the id, and
    byte counts match what is held.
    """
    queue, now, _ = make_queue()
    ids = ["A" * 16, "B" * 16, "C" * 16]
    model: dict[str, dict] = {}  # relative -> {"id", "order", "until", "receipt", "at"}
    counter = 0
    for action, k in steps:
        paired_id = ids[k]
        readable = sorted((m["order"], r) for r, m in model.items()
                          if m["id"] == paired_id and (m["until"] is None or m["until"] <= now[0]))
        if action == "put":
            relative = f"{paired_id}/{counter}.jpg"
            queue.put(paired_id, relative, 3)
            model[relative] = {"id": paired_id, "order": counter, "until": None, "receipt": None, "at": now[0]}
            counter += 1
        elif action == "lease":
            photo = queue.lease(paired_id)
            assert (photo.relative if photo else None) == (readable[0][1] if readable else None)
            if photo:
                model[photo.relative].update(until=now[0] + 10, receipt=photo.receipt)
        elif action == "take":
            photo = queue.take(paired_id)
            assert (photo.relative if photo else None) == (readable[0][1] if readable else None)
            if photo:
                del model[photo.relative]
        elif action == "confirm":
            leased = [(r, m) for r, m in model.items() if m["id"] == paired_id and m["receipt"]]
            if leased:
                relative, m = leased[0]
                assert queue.confirm(paired_id, m["receipt"]).relative == relative
                del model[relative]
        elif action == "tick":
            now[0] += 4
        elif action == "expire":
            cutoff = now[0] - 8
            queue.requeue_expired()
            gone = {p.relative for p in queue.expire_older_than(cutoff)}
            # Every waiting photo old enough goes (each id's oldest come first).
            expected = {r for r, m in model.items() if m["at"] <= cutoff
                        and (m["until"] is None or m["until"] <= now[0])}
            assert gone == expected
            for relative in gone:
                del model[relative]
        for i in ids:
            assert queue.queued_bytes(i) == 3 * sum(1 for m in model.values() if m["id"] == i)
    assert len(queue) == len(model)


def test_photos_given_back_out_of_order_keep_their_places():
    q, _ = queue(Clock())
    for name in ("1", "2", "3"):
        q.put(A, f"{A}/{name}.jpg", 1)
    first, second = q.take(A), q.take(A)
    q.give_back(second)
    q.give_back(first)
    assert q.put(A, f"{A}/1.jpg", 1) is first  # known again, as the same photo
    assert [q.take(A).relative for _ in range(3)] == [f"{A}/1.jpg", f"{A}/2.jpg", f"{A}/3.jpg"]
