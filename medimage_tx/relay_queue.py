"""
The relay's queue bookkeeping (PROTOCOL.md A4, B4): per paired id, photos
oldest first; a photo sent with acknowledgement is leased (hidden from other
reads) until confirmed, and comes back if the lease runs out.

The files themselves live in the relay's L{PhotoStore}; this module only
knows their relative paths, so a shared store for several relay machines
can replace it behind the same five calls: L{put}, L{peek}, L{lease},
L{confirm}, L{requeue_expired} (plus L{take} for old readers).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable, Optional

#: B4: how long a leased photo stays hidden before it is given out again.
DEFAULT_LEASE_SECONDS = 300.0


@dataclass
class QueuedPhoto:
    paired_id: str
    relative: str  # "<id>/<folders>/<name>" under the relay's photos folder
    size: int
    order: int
    receipt: Optional[str] = None
    leased_until: Optional[float] = None

    @property
    def file_name(self) -> str:
        """
        The C{file-name} header value of PROTOCOL.md A4.
        """
        return "/" + self.relative


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
    _queues: dict[str, list[QueuedPhoto]] = field(default_factory=dict)
    _by_relative: dict[str, QueuedPhoto] = field(default_factory=dict)
    _next_order: int = 0

    def put(self, paired_id: str, relative: str, size: int) -> QueuedPhoto:
        """
        Queue a stored photo (a repeated put of the same path is one photo).
        """
        if relative in self._by_relative:
            return self._by_relative[relative]
        photo = QueuedPhoto(paired_id, relative, size, self._next_order)
        self._next_order += 1
        self._queues.setdefault(paired_id, []).append(photo)
        self._by_relative[relative] = photo
        self.on_available(paired_id)
        return photo

    def peek(self, paired_id: str) -> Optional[QueuedPhoto]:
        """
        The oldest photo waiting for C{paired_id} that is not leased.
        """
        self.requeue_expired()
        for photo in self._queues.get(paired_id, ()):
            if photo.leased_until is None:
                return photo
        return None

    def lease(self, paired_id: str) -> Optional[QueuedPhoto]:
        """
        Hide the oldest waiting photo until it is confirmed or the lease
        runs out; its C{receipt} confirms it.
        """
        photo = self.peek(paired_id)
        if photo is not None:
            photo.receipt = secrets.token_urlsafe(18)
            photo.leased_until = self.now() + self.lease_seconds
        return photo

    def take(self, paired_id: str) -> Optional[QueuedPhoto]:
        """
        Remove the oldest waiting photo (an old reader: no confirmation).
        """
        photo = self.peek(paired_id)
        if photo is not None:
            self._remove(photo)
        return photo

    def give_back(self, photo: QueuedPhoto) -> None:
        """
        Put a taken photo back in its place (its sending failed).
        """
        if photo.relative in self._by_relative:
            return
        photo.leased_until = None
        queue = self._queues.setdefault(photo.paired_id, [])
        queue.append(photo)
        queue.sort(key=lambda p: p.order)
        self._by_relative[photo.relative] = photo
        self.on_available(photo.paired_id)

    def confirm(self, paired_id: str, receipt: str) -> Optional[QueuedPhoto]:
        """
        The reader stored the photo: remove it.  A receipt stays good after
        its lease ran out, as long as nobody else has leased the photo since.
        """
        for photo in self._queues.get(paired_id, ()):
            if photo.receipt is not None and secrets.compare_digest(photo.receipt, receipt):
                self._remove(photo)
                return photo
        return None

    def requeue_expired(self) -> list[str]:
        """
        Make photos whose lease ran out readable again; returns their ids.
        """
        now = self.now()
        woken = []
        for paired_id, queue in self._queues.items():
            for photo in queue:
                if photo.leased_until is not None and photo.leased_until <= now:
                    photo.leased_until = None
                    woken.append(paired_id)
        for paired_id in set(woken):
            self.on_available(paired_id)
        return woken

    def next_expiry(self) -> Optional[float]:
        times = [p.leased_until for q in self._queues.values() for p in q if p.leased_until is not None]
        return min(times) if times else None

    def queued_bytes(self, paired_id: str) -> int:
        """
        What the relay holds for one id (waiting and leased).
        """
        return sum(p.size for p in self._queues.get(paired_id, ()))

    def holds(self, relative: str) -> bool:
        """
        Whether the photo is still on the relay (waiting or leased).
        """
        return relative in self._by_relative

    def _remove(self, photo: QueuedPhoto) -> None:
        queue = self._queues.get(photo.paired_id, [])
        if photo in queue:
            queue.remove(photo)
        if not queue:
            self._queues.pop(photo.paired_id, None)
        self._by_relative.pop(photo.relative, None)
