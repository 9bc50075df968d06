"""
The relay store on this machine's disk (the default: no database needed).
Photos are files under the relay's photos folder, fsynced and renamed into
place before the phone's C{200}; the queue and its leases are in memory
(L{RelayQueue}) and rebuilt from the files at start, so a restart gives
leased photos out again.

Calls fire Deferreds, as the shared store's do, so the relay's routes are
the same over both.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger

from ..durable import BackgroundJSONWriter, InThread, read_json, reactor_threads
from ..errors import TryLater
from ..identity import PAIRED_ID
from .pairing_codes import Pairing, PairingBook
from ..photos.paths import inside
from .queue import QuotaFull, RelayQueue, Reservation
from ..photos.store import PhotoStore
from .base import Delivery, QueuedPhoto, quota_exceeded, relay_full
from .known_ids import KnownIds

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from ..config import Config

log = Logger()


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.digest()


def remove_photo(photos: Path, relative: str) -> None:
    path = inside(photos, relative)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    # Remove the emptied patient folders, never the photos folder itself.
    folder = path.parent
    while folder != photos:
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent


def _remove_photos(photos: Path, relatives: list[str]) -> None:
    for relative in relatives:
        remove_photo(photos, relative)


def free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _photo(queued) -> QueuedPhoto:
    return QueuedPhoto(queued.paired_id, queued.relative, queued.size, queued.receipt)


#: Known ids' times moved on (restamps) and ids forgotten are saved together
#: at most this often: a time a crash loses is moved on again at the PC's
#: next poll, and each save writes the whole book (11.9 MB at 100,000 ids).
KNOWN_SAVE_SECONDS = 60.0


class LocalRelayStore:
    """
    @ivar on_available: called with an id whenever a photo becomes readable
        for it (a put, a release, a lease that ran out).
    """

    name = "local"

    def __init__(self, photo_store: PhotoStore, reactor: Any, clock: IReactorTime, lease_seconds: float,
                 in_thread: Optional[InThread] = None,
                 known_path: Optional[Path] = None):
        self.photo_store = photo_store
        self.reactor = reactor
        self._in_thread = in_thread or reactor_threads(reactor)
        self.clock = clock
        self.on_available: Callable[[Optional[str]], None] = lambda paired_id: None
        self.queue = RelayQueue(now=clock.seconds, lease_seconds=lease_seconds,
                                on_available=lambda paired_id: self.on_available(paired_id))
        # The ids a clinic is known to read, kept in known_path across restarts.
        self.known = KnownIds(clock.seconds, on_known=lambda paired_id: self.queue.set_known(paired_id, True),
                              on_forgotten=lambda paired_id: self.queue.set_known(paired_id, False))
        self._known_writer = None
        self._known_save_call: Optional[IDelayedCall] = None
        if known_path is not None:
            self.known.restore(read_json(known_path))
            self._known_writer = BackgroundJSONWriter(known_path, self.known.snapshot, self._in_thread)
        self._expiry_call: Optional[IDelayedCall] = None
        self._full = False
        self._pool_full = False

    @property
    def photos(self) -> Path:
        return self.photo_store.photos

    def start(self) -> None:
        pass

    def stop(self) -> Deferred:
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        if self._known_save_call is not None:
            self._known_save_call.cancel()
            return self._save_known_now()
        return succeed(None)

    def load_existing(self) -> int:
        """
        Queue the photos already on disk (after a restart), oldest first.
        """
        found = []
        for path in self.photos.rglob("*"):
            relative = path.relative_to(self.photos).as_posix()
            paired_id = relative.split("/", 1)[0]
            if path.is_file() and "/" in relative and PAIRED_ID.fullmatch(paired_id):
                stat = path.stat()
                found.append((stat.st_mtime_ns, relative, paired_id, stat.st_size))
        # Their age counts towards expiry: the file's time, on the relay's clock.
        now, wall = self.clock.seconds(), time.time()
        for mtime_ns, relative, paired_id, size in sorted(found):
            age = max(0.0, wall - mtime_ns / 1e9)
            self.queue.put(paired_id, relative, size, queued_at=now - age)
        return len(found)

    # The queue

    async def put(self, paired_id: str, parts: Sequence[str], temp_path: Path, fd: Optional[int],
                  size: int, config: Config) -> tuple[str, bool]:
        """
        Store a received photo and queue it; C{(relative, duplicate)}.

        @raise TryLater: no room (the pairing's C{relayQuotaBytes}, the
            relay's C{relayTotalBytes}, or C{relayMinFreeBytes} on the disk).
        """
        try:
            # Room is held before storing, so parallel uploads cannot overshoot.
            reservation = self.reserve(paired_id, size, config)
        except BaseException:
            if fd is not None:
                os.close(fd)
            temp_path.unlink(missing_ok=True)
            raise
        try:
            stored = await self._in_thread(self.photo_store.store, temp_path, fd, tuple(parts))
        except BaseException:
            self.queue.release(reservation)
            raise
        self.queue.put(paired_id, stored.relative, size, reservation)
        return stored.relative, stored.duplicate

    def reserve(self, paired_id: str, size: int, config: Config) -> Reservation:
        try:
            reservation = self.queue.reserve(paired_id, size, config.relayQuotaBytes,
                                             config.relayTotalBytes, config.relayUnknownBytes)
        except QuotaFull as full:
            if full.scope == "pairing":
                raise quota_exceeded() from None
            if full.scope == "unknown":
                if not self._pool_full:
                    self._pool_full = True
                    log.warn("Relay: refusing uploads for ids no clinic PC has read from here: they hold "
                             "{held} bytes (relayUnknownBytes); known ids are not affected",
                             held=self.queue.unknown_bytes())
                raise relay_full() from None
            self._note_full(f"it holds {self.queue.total_bytes()} bytes (relayTotalBytes)")
            raise relay_full() from None
        if self._pool_full and paired_id not in self.known:
            self._pool_full = False
            log.info("Relay: room again for ids no clinic PC has read from here")
        # The upload is already in the relay's tmp folder, on the same disk.
        free = free_bytes(self.photos)
        if free is not None and free < config.relayMinFreeBytes:
            self.queue.release(reservation)
            self._note_full(f"{free} bytes free on its disk (relayMinFreeBytes)")
            raise relay_full()
        if self._full:
            self._full = False
            log.info("Relay: room again for uploads")
        return reservation

    def _note_full(self, why: str) -> None:
        if not self._full:
            self._full = True
            log.warn("Relay: full, refusing uploads until photos are collected or expire: {why}",
                     why=why)

    # Ids a clinic is known to read

    async def note_reader(self, paired_id: str, address: str) -> bool:
        """
        C{/read/<id>} from C{address} (or a code redeemed there that names
        the id); fires with whether the id is known now.  A newly known id
        is on disk before the read is answered (rare: a PC's first poll).
        """
        noted = self.known.note(paired_id, address)
        if noted == "new" and self._known_writer is not None:
            try:
                await self._known_writer.save()
            except CancelledError:
                raise  # the reader went away; the write goes on
            except Exception as e:
                # Known in memory all the same; the next save retries.
                log.warn("Relay: cannot save relay-known.json: {error}", error=e)
        elif noted == "restamped":
            self._save_known()
        return noted is not None

    def forget_unread(self, cutoff: float) -> Deferred:
        """
        Forget the ids nobody read since C{cutoff}; fires with how many.
        """
        forgotten = self.known.forget_unread(cutoff)
        if forgotten:
            self._save_known()
        return succeed(len(forgotten))

    def _save_known(self) -> None:
        # Not awaited, and together with what else changes within
        # KNOWN_SAVE_SECONDS: a time moved on that a crash loses is moved
        # on again at the PC's next poll.
        if self._known_writer is not None and self._known_save_call is None:
            self._known_save_call = self.clock.callLater(KNOWN_SAVE_SECONDS, self._save_known_now)

    def _save_known_now(self) -> Deferred:
        self._known_save_call = None
        assert self._known_writer is not None  # only scheduled when there is one
        return self._known_writer.save().addErrback(
            lambda failure: log.warn("Relay: cannot save relay-known.json: {error}",
                                     error=failure.getErrorMessage()))

    async def expire_older_than(self, cutoff: float) -> list[QueuedPhoto]:
        """
        Remove the waiting photos queued before C{cutoff}; fires with them
        once their files are gone.
        """
        expired = self.queue.expire_older_than(cutoff)
        await self._in_thread(_remove_photos, self.photos, [p.relative for p in expired])
        return [_photo(p) for p in expired]

    def peek(self, paired_id: str) -> Deferred:
        photo = self.queue.peek(paired_id)
        return succeed(_photo(photo) if photo is not None else None)

    async def lease(self, paired_id: str) -> Optional[Delivery]:
        queued = self.queue.lease(paired_id)
        if queued is None:
            return None
        self._watch_expiry()
        path = inside(self.photos, queued.relative)
        try:
            sha256 = await self._in_thread(file_sha256, path)
        except BaseException:
            self.queue.unlease(paired_id, queued.receipt)
            raise
        return Delivery(_photo(queued), sha256, opener=lambda: open(path, "rb"))

    def release(self, delivery: Delivery) -> Deferred:
        """
        Make a leased photo readable again at once (its sending failed).
        """
        self.queue.unlease(delivery.photo.paired_id, delivery.photo.receipt)
        return succeed(None)

    async def confirm(self, paired_id: str, receipt: str) -> Optional[QueuedPhoto]:
        queued = self.queue.confirm(paired_id, receipt)
        if queued is None:
            return None
        await self._in_thread(remove_photo, self.photos, queued.relative)
        return _photo(queued)

    def holds(self, relative: str) -> Deferred:
        return succeed(self.queue.holds(relative))

    def queued_bytes(self, paired_id: str) -> Deferred:
        return succeed(self.queue.queued_bytes(paired_id))

    # Leases that run out wake the waiters in time.

    def _watch_expiry(self) -> None:
        expiry = self.queue.next_expiry()
        if expiry is None or (self._expiry_call is not None and self._expiry_call.active()):
            return
        self._expiry_call = self.clock.callLater(max(0, expiry - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        self.queue.requeue_expired()
        self._watch_expiry()


class LocalPairingDesk:
    """
    Pairing codes and their limits in this process (L{PairingBook}), saved
    to pairing.json, in a thread, before anything that changed them is
    answered: a restart (or a crash an attacker caused) gives no fresh
    guesses.

    @param save: saves the book durably; returns a Deferred.
    """

    def __init__(self, book: PairingBook, save: Callable[[], Deferred]):
        self.book = book
        self.save = save

    async def issue(self, guid: str, proxy_server: str, country: str, address: str) -> Pairing:
        pairing = self.book.issue(guid, proxy_server, country, address)
        try:
            await self.save()
        except CancelledError:
            raise  # the client went away
        except Exception as e:
            self.book.revoke(pairing)
            log.warn("Pairing: cannot save pairing.json: {error}", error=e)
            raise TryLater("Cannot issue a pairing code right now; try again later.",
                           phrase="Cannot issue a pairing code now; try again later")
        return pairing

    async def redeem(self, code: str, address: str) -> tuple[bool, Optional[Pairing]]:
        """
        C{(checked, pairing)}: C{checked} is False when the limits allow no
        more compares (then nothing was looked up, nothing changed).
        """
        compare = self.book.compare(code, address)
        if compare is None:
            return False, None
        # The guess is counted on disk before its answer can tell anything.
        try:
            await self.save()
        except CancelledError:
            raise  # the client went away; the guess stays counted
        except Exception as e:
            log.warn("Pairing: cannot save pairing.json: {error}", error=e)
            raise TryLater("Cannot check pairing codes right now; try again later.",
                           phrase="Cannot check pairing codes now; try again later")
        self.book.settle(compare)
        return True, compare.pairing
