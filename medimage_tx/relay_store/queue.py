"""
The relay's queue bookkeeping (PROTOCOL.md A4, B4): per paired id, photos
oldest first; a photo sent with acknowledgement is leased (hidden from other
reads) until confirmed, and comes back if the lease runs out.  Room is
reserved before a photo is stored, so parallel uploads cannot overshoot the
per-pairing quota or the relay's total; photos nobody collects expire.

The files themselves live in the relay's L{PhotoStore}; this module only
knows their relative paths, so a shared store for several relay machines
can replace it behind the same calls: L{reserve}/L{release}, L{put},
L{peek}, L{lease}, L{confirm}, L{requeue_expired}, L{expire_older_than}
(plus L{take} and L{give_back} for old readers).

Every call costs O(log n) or less in the number of queued photos: a read
never scans the queue (80,000 queued photos used to cost 27 ms a read).
"""

from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass, field
from typing import Callable, Optional

#: B4: how long a leased photo stays hidden before it is given out again.
DEFAULT_LEASE_SECONDS = 300.0


@dataclass(eq=False)
class QueuedPhoto:
    paired_id: str
    relative: str  # "<id>/<folders>/<name>" under the relay's photos folder
    size: int
    order: int
    queued_at: float = 0.0
    receipt: Optional[str] = None
    leased_until: Optional[float] = None
    waiting: bool = False  # readable now (not leased, not taken, not removed)

    @property
    def file_name(self) -> str:
        """
        The C{file-name} header value of PROTOCOL.md A4.
        """
        return "/" + self.relative


@dataclass(eq=False)
class Reservation:
    """
    Room held for one photo between "the body arrived" and "it is queued".
    """

    paired_id: str
    size: int
    open: bool = True


class QuotaFull(Exception):
    """
    No room for this photo: C{scope} is C{"pairing"} (this id holds its
    quota), C{"unknown"} (the ids no clinic is known to read hold their
    pool) or C{"relay"} (the relay holds its total).
    """

    def __init__(self, scope: str):
        super().__init__(scope)
        self.scope = scope


@dataclass
class RelayQueue:
    """
    @param now: the clock, as a function returning seconds.
    @param on_available: called with an id whenever a photo becomes
        available to read for it (a put, or an expired lease).
    """

    now: Callable[[], float]
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    on_available: Callable[[str], None] = lambda paired_id: None
    _photos: dict[str, QueuedPhoto] = field(default_factory=dict)  # by relative path
    # Per id, a heap of (order, push, photo) of the readable photos; entries
    # whose photo is no longer waiting are dropped when they reach the top.
    _waiting: dict[str, list[tuple[int, int, QueuedPhoto]]] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)  # photos held per id
    _held: dict[str, int] = field(default_factory=dict)  # bytes queued + reserved per id
    _total: int = 0  # bytes queued + reserved in all
    # Ids a clinic is known to read (L{medimage_tx.relay_store.known_ids});
    # the others' bytes, together, are held to their own pool.
    _known: set[str] = field(default_factory=set)
    _unknown_total: int = 0
    _receipts: dict[str, QueuedPhoto] = field(default_factory=dict)
    # Leases by expiry: (leased_until, push, photo); stale entries skipped.
    _leases: list[tuple[float, int, QueuedPhoto]] = field(default_factory=list)
    _next_order: int = 0
    _pushes: int = 0  # tie-breaker: heap entries never compare photos

    # Room

    def reserve(self, paired_id: str, size: int, per_id_limit: int, total_limit: int,
                unknown_limit: Optional[int] = None) -> Reservation:
        """
        Hold room for a photo of C{size} bytes, or raise L{QuotaFull}.
        Check and hold happen in one call, so uploads that arrive together
        cannot all pass the check and overshoot.  An id not L{set_known}
        also needs room in the pool of C{unknown_limit} bytes (when given).
        """
        if self._held.get(paired_id, 0) + size > per_id_limit:
            raise QuotaFull("pairing")
        if (unknown_limit is not None and paired_id not in self._known
                and self._unknown_total + size > unknown_limit):
            raise QuotaFull("unknown")
        if self._total + size > total_limit:
            raise QuotaFull("relay")
        self._add_bytes(paired_id, size)
        return Reservation(paired_id, size)

    def release(self, reservation: Reservation) -> None:
        """
        The photo was not queued after all: give its room back.
        """
        if reservation.open:
            reservation.open = False
            self._add_bytes(reservation.paired_id, -reservation.size)

    def queued_bytes(self, paired_id: str) -> int:
        """
        What the relay holds for one id (waiting, leased and reserved).
        """
        return self._held.get(paired_id, 0)

    def total_bytes(self) -> int:
        """
        What the relay holds in all (waiting, leased and reserved).
        """
        return self._total

    def unknown_bytes(self) -> int:
        """
        What the relay holds for ids no clinic is known to read.
        """
        return self._unknown_total

    def set_known(self, paired_id: str, known: bool) -> None:
        """
        A clinic is now known to read C{paired_id} (or no longer): its
        bytes leave the pool of unknown ids (or come back to it).
        """
        if known and paired_id not in self._known:
            self._known.add(paired_id)
            self._unknown_total -= self._held.get(paired_id, 0)
        elif not known and paired_id in self._known:
            self._known.discard(paired_id)
            self._unknown_total += self._held.get(paired_id, 0)

    # Queueing and reading

    def put(self, paired_id: str, relative: str, size: int,
            reservation: Optional[Reservation] = None, queued_at: Optional[float] = None) -> QueuedPhoto:
        """
        Queue a stored photo (a repeated put of the same path is one photo).
        Its C{reservation}, if any, becomes the photo's own room.
        """
        existing = self._photos.get(relative)
        if existing is not None:
            if reservation is not None:
                self.release(reservation)
            return existing
        if reservation is not None and reservation.open:
            reservation.open = False
            self._add_bytes(reservation.paired_id, size - reservation.size)
        else:
            self._add_bytes(paired_id, size)
        photo = QueuedPhoto(paired_id, relative, size, self._next_order,
                            self.now() if queued_at is None else queued_at)
        self._next_order += 1
        self._photos[relative] = photo
        self._count[paired_id] = self._count.get(paired_id, 0) + 1
        self._make_waiting(photo)
        self.on_available(paired_id)
        return photo

    def peek(self, paired_id: str) -> Optional[QueuedPhoto]:
        """
        The oldest photo waiting for C{paired_id} that is not leased.
        """
        self.requeue_expired()
        heap = self._waiting.get(paired_id)
        while heap:
            photo = heap[0][2]
            if photo.waiting and self._photos.get(photo.relative) is photo:
                return photo
            heapq.heappop(heap)
        self._waiting.pop(paired_id, None)
        return None

    def lease(self, paired_id: str) -> Optional[QueuedPhoto]:
        """
        Hide the oldest waiting photo until it is confirmed or the lease
        runs out; its C{receipt} confirms it.
        """
        photo = self._pop_waiting(paired_id)
        if photo is not None:
            if photo.receipt is not None:
                self._receipts.pop(photo.receipt, None)  # only the newest receipt counts
            photo.receipt = secrets.token_urlsafe(18)
            photo.leased_until = self.now() + self.lease_seconds
            self._receipts[photo.receipt] = photo
            self._pushes += 1
            heapq.heappush(self._leases, (photo.leased_until, self._pushes, photo))
        return photo

    def take(self, paired_id: str) -> Optional[QueuedPhoto]:
        """
        Remove the oldest waiting photo (an old reader: no confirmation).
        """
        photo = self._pop_waiting(paired_id)
        if photo is not None:
            self._remove(photo)
        return photo

    def give_back(self, photo: QueuedPhoto) -> None:
        """
        Put a taken photo back in its place (its sending failed).
        """
        if photo.relative in self._photos:
            return
        photo.leased_until = None
        self._photos[photo.relative] = photo
        self._count[photo.paired_id] = self._count.get(photo.paired_id, 0) + 1
        self._add_bytes(photo.paired_id, photo.size)
        self._make_waiting(photo)
        self.on_available(photo.paired_id)

    def unlease(self, paired_id: str, receipt: Optional[str]) -> None:
        """
        A leased photo whose sending failed: readable again at once.
        """
        if receipt is None:
            return  # never leased
        photo = self._receipts.get(receipt)
        if (photo is None or photo.paired_id != paired_id or photo.leased_until is None
                or self._photos.get(photo.relative) is not photo):
            return
        self._receipts.pop(receipt, None)
        photo.receipt = None
        photo.leased_until = None  # its entry in the lease heap is now stale
        self._make_waiting(photo)
        self.on_available(paired_id)

    def confirm(self, paired_id: str, receipt: str) -> Optional[QueuedPhoto]:
        """
        The reader stored the photo: remove it.  A receipt stays good after
        its lease ran out, as long as nobody else has leased the photo since.
        """
        photo = self._receipts.get(receipt)
        if photo is None or photo.paired_id != paired_id or self._photos.get(photo.relative) is not photo:
            return None
        self._remove(photo)
        return photo

    def requeue_expired(self) -> list[str]:
        """
        Make photos whose lease ran out readable again; returns their ids.
        """
        now = self.now()
        woken = []
        while self._leases and self._leases[0][0] <= now:
            leased_until, _, photo = heapq.heappop(self._leases)
            if photo.leased_until != leased_until or self._photos.get(photo.relative) is not photo:
                continue  # confirmed, or leased again since: a stale entry
            photo.leased_until = None
            self._make_waiting(photo)
            woken.append(photo.paired_id)
        for paired_id in dict.fromkeys(woken):
            self.on_available(paired_id)
        return woken

    def next_expiry(self) -> Optional[float]:
        while self._leases:
            leased_until, _, photo = self._leases[0]
            if photo.leased_until == leased_until and self._photos.get(photo.relative) is photo:
                return leased_until
            heapq.heappop(self._leases)
        return None

    def expire_older_than(self, cutoff: float) -> list[QueuedPhoto]:
        """
        Remove the waiting photos queued at or before C{cutoff} (nobody
        collected them) and return them; leased ones stay until their
        lease ends.  Costs O(ids + expired): each id's oldest come first.
        """
        expired = []
        for paired_id in list(self._waiting):
            heap = self._waiting[paired_id]
            while heap:
                photo = heap[0][2]
                if not (photo.waiting and self._photos.get(photo.relative) is photo):
                    heapq.heappop(heap)
                elif photo.queued_at <= cutoff:
                    heapq.heappop(heap)
                    photo.waiting = False
                    self._remove(photo)
                    expired.append(photo)
                else:
                    break
            if not heap:
                self._waiting.pop(paired_id, None)
        return expired

    def holds(self, relative: str) -> bool:
        """
        Whether the photo is still on the relay (waiting or leased).
        """
        return relative in self._photos

    def __len__(self) -> int:
        return len(self._photos)

    # Inside

    def _add_bytes(self, paired_id: str, size: int) -> None:
        held = self._held.get(paired_id, 0) + size
        if held:
            self._held[paired_id] = held
        else:
            self._held.pop(paired_id, None)
        self._total += size
        if paired_id not in self._known:
            self._unknown_total += size

    def _make_waiting(self, photo: QueuedPhoto) -> None:
        photo.waiting = True
        self._pushes += 1
        heapq.heappush(self._waiting.setdefault(photo.paired_id, []), (photo.order, self._pushes, photo))

    def _pop_waiting(self, paired_id: str) -> Optional[QueuedPhoto]:
        photo = self.peek(paired_id)
        if photo is not None:
            heapq.heappop(self._waiting[paired_id])
            photo.waiting = False
        return photo

    def _remove(self, photo: QueuedPhoto) -> None:
        photo.waiting = False
        if self._photos.get(photo.relative) is not photo:
            return
        del self._photos[photo.relative]
        if photo.receipt is not None:
            self._receipts.pop(photo.receipt, None)
        count = self._count[photo.paired_id] - 1
        if count:
            self._count[photo.paired_id] = count
        else:
            del self._count[photo.paired_id]
        self._add_bytes(photo.paired_id, -photo.size)
