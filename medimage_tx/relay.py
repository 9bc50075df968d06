"""
The internet relay's side (PROTOCOL.md A4, B4): L{Relay} keeps the queue of
photos per paired id and wakes long polls; L{ReadResource} serves
C{HEAD|GET|DELETE /read/<id>[/<receipt>]}.  The PC's side, which pulls from
a relay, is L{medimage_tx.puller}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.static import NoRangeStaticProducer

from .errors import Rejected, TryLater
from .identity import PAIRED_ID, fingerprint
from .paths import inside
from .relay_queue import QuotaFull, RelayQueue, Reservation
from .store import PhotoStore
from .web import NOT_READABLE, Answer, answer_now, render_async

#: Response header by which a relay says it supports PROTOCOL.md B4.
RELAY_FEATURES = b"X-MedImage-Relay"
RELAY_FEATURES_VALUE = b"ack, wait"
ACK_HEADER = b"X-MedImage-Ack"
RECEIPT_HEADER = b"X-MedImage-Receipt"

MAX_WAIT = 60
NOTHING = b"none"
_CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,3}")

_MIME_BY_EXTENSION = {
    ".jpg": "image/jpeg", ".pdf": "application/pdf", ".png": "image/png", ".mp4": "video/mp4",
    ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".heic": "image/heic", ".heif": "image/heif",
    ".csv": "text/csv", ".json": "application/json",
}


def sha256_digests(path: Path) -> tuple[bytes, bytes]:
    """
    The C{Digest} and C{Content-Digest} header values for a file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    encoded = base64.b64encode(digest.digest())
    return b"sha-256=" + encoded, b"sha-256=:" + encoded + b":"


# Relay role


class Relay:
    """
    The relay's queue over its photo store, with long-poll waiters.
    """

    log = Logger()

    def __init__(self, store: PhotoStore, clock: Any, lease_seconds: float):
        self.store = store
        self.clock = clock
        self.queue = RelayQueue(now=clock.seconds, lease_seconds=lease_seconds,
                                on_available=self._wake)
        self._waiters: dict[str, list[Deferred]] = {}
        self._expiry_call = None
        self._full = False

    def load_existing(self) -> int:
        """
        Queue the photos already on disk (after a restart), oldest first.
        Leases are not kept across restarts: leased photos are given out again.
        """
        found = []
        for path in self.store.photos.rglob("*"):
            relative = path.relative_to(self.store.photos).as_posix()
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

    def reserve(self, paired_id: str, size: int, config) -> Reservation:
        """
        Hold room for a photo before it is stored, or raise L{TryLater}:
        the pairing holds C{relayQuotaBytes}, the relay C{relayTotalBytes},
        or the disk would keep less than C{relayMinFreeBytes} free.
        """
        try:
            reservation = self.queue.reserve(paired_id, size, config.relayQuotaBytes,
                                             config.relayTotalBytes)
        except QuotaFull as full:
            if full.scope == "pairing":
                # Disk-filling protection: the PC must collect first.
                raise TryLater("The relay holds too much for this pairing; the PC has not "
                               "collected it yet. Try again later.", retry_after=120, status=429,
                               phrase="Too many photos wait for your clinic's computer; "
                                      "the photo stays on the phone") from None
            self._note_full(f"it holds {self.queue.total_bytes()} bytes (relayTotalBytes)")
            raise relay_full() from None
        # The upload is already in the relay's tmp folder, on the same disk.
        free = free_bytes(self.store.photos)
        if free is not None and free < config.relayMinFreeBytes:
            self.queue.release(reservation)
            self._note_full(f"{free} bytes free on its disk (relayMinFreeBytes)")
            raise relay_full()
        if self._full:
            self._full = False
            self.log.info("Relay: room again for uploads")
        return reservation

    def _note_full(self, why: str) -> None:
        if not self._full:
            self._full = True
            self.log.warn("Relay: full, refusing uploads with 503 until photos are collected "
                          "or expire: {why}", why=why)

    def wait(self, paired_id: str, timeout: float) -> Deferred:
        """
        Fires (with None) when a photo becomes available for C{paired_id},
        or after C{timeout} seconds.  No timers run per idle waiter beyond
        its one timeout.
        """
        d: Deferred = Deferred(lambda d: self._forget(paired_id, d))
        self._waiters.setdefault(paired_id, []).append(d)
        call = self.clock.callLater(timeout, self._time_out, paired_id, d)
        d.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
        return d

    def _time_out(self, paired_id: str, d: Deferred) -> None:
        self._forget(paired_id, d)
        d.callback(None)

    def _forget(self, paired_id: str, d: Deferred) -> None:
        waiters = self._waiters.get(paired_id, [])
        if d in waiters:
            waiters.remove(d)
        if not waiters:
            self._waiters.pop(paired_id, None)

    def _wake(self, paired_id: str) -> None:
        for d in self._waiters.pop(paired_id, []):
            d.callback(None)

    def leased(self) -> None:
        """
        A lease was made: make sure expiry wakes the waiters in time.
        """
        expiry = self.queue.next_expiry()
        if expiry is None or (self._expiry_call is not None and self._expiry_call.active()):
            return
        self._expiry_call = self.clock.callLater(max(0, expiry - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        self.queue.requeue_expired()
        self.leased()



def relay_full() -> TryLater:
    return TryLater("The relay is full. Try again later.", retry_after=300, status=507,
                    phrase="The relay is full; the photo stays on the phone")


def free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class RelayExpiry(Service):
    """
    Removes photos nobody collected within C{relayExpiryDays}: at start and
    every hour.  Logs one line per pairing, by fingerprint only.
    """

    log = Logger()
    name = "relay-expiry"
    interval = 3600.0

    def __init__(self, state, clock: Any):
        self.state = state
        self.clock = clock
        self._loop: Optional[LoopingCall] = None
        #: The last sweep's file removal (fired once the files are gone).
        self.removing: Deferred = succeed(None)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("The relay's expiry stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def sweep(self):
        relay, days = self.state.relay, self.state.config.relayExpiryDays
        expired = relay.queue.expire_older_than(self.clock.seconds() - days * 86400)
        if not expired:
            return None
        per_id: dict[str, list[int]] = {}
        for photo in expired:
            per_id.setdefault(photo.paired_id, []).append(photo.size)
        for paired_id, sizes in per_id.items():
            self.log.warn("Relay: removed {count} photo(s) ({size} bytes) for {fp}: not collected "
                          "within {days:g} days (relayExpiryDays)", count=len(sizes), size=sum(sizes),
                          fp=fingerprint(paired_id), days=days)
        self.removing = self.state.in_thread(_remove_photos, relay.store.photos,
                                             [p.relative for p in expired])
        return self.removing


def _remove_photos(photos: Path, relatives: list[str]) -> None:
    for relative in relatives:
        remove_photo(photos, relative)


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


class ReadResource(Resource):
    """
    C{HEAD|GET /read/<id>} and C{DELETE /read/<id>/<receipt>}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, state):
        super().__init__()
        self.state = state

    def render(self, request):
        request.setHeader(RELAY_FEATURES, RELAY_FEATURES_VALUE)
        relay = self.state.relay
        if not self.state.config.allowPhotosLeaving or relay is None:
            return answer_now(request, Answer(400, NOT_READABLE))
        if request.method not in (b"GET", b"HEAD", b"DELETE"):
            return answer_now(request, Answer(405, b"Use GET, HEAD or DELETE"))
        return render_async(request, self._read, relay)

    async def _read(self, request, relay: Relay):
        path = [p for p in request.postpath if p]
        if not path or not PAIRED_ID.fullmatch(path[0].decode("latin-1")) or len(path) > 2:
            raise Rejected("Expected /read/<id>: a paired id is 16 to 20 letters and digits")
        paired_id = path[0].decode()
        if request.method == b"DELETE":
            if len(path) != 2:
                raise Rejected("Expected DELETE /read/<id>/<receipt>")
            return await self._confirm(relay, paired_id, path[1].decode("ascii", "replace"))
        callback = _query(request, b"callback")
        if callback is not None and not _CALLBACK.fullmatch(callback):
            raise Rejected("callback must be a plain JavaScript identifier")
        wait = _wait_seconds(_query(request, b"wait"))
        photo = relay.queue.peek(paired_id)
        if photo is None and wait and request.method == b"GET" and callback is None:
            await relay.wait(paired_id, wait)
            photo = relay.queue.peek(paired_id)
        if callback is not None:
            # A script tag cannot use a photo: JSONP only says what waits.
            text = photo.file_name if photo is not None else NOTHING.decode()
            body = f"{callback}({json.dumps(text)})".encode()
            return Answer(200, body, b"application/javascript")
        if photo is None:
            return Answer(200, NOTHING)
        headers = {b"file-name": photo.file_name.encode(), b"content-type": _mime(photo.relative)}
        if request.method == b"HEAD":
            return Answer(200, b"", headers[b"content-type"], {b"file-name": headers[b"file-name"]})
        if request.getHeader(ACK_HEADER) == b"1":
            photo = relay.queue.lease(paired_id)
            relay.leased()
            digest, content_digest = await self.state.in_thread(
                sha256_digests, inside(relay.store.photos, photo.relative))
            headers.update({RECEIPT_HEADER: photo.receipt.encode(), b"digest": digest,
                            b"content-digest": content_digest})
            await self._send_file(request, relay, photo, headers)
        else:
            photo = relay.queue.take(paired_id)
            try:
                await self._send_file(request, relay, photo, headers)
            except BaseException:
                relay.queue.give_back(photo)
                raise
            # In the same turn as the answer's end, so nobody can see the
            # photo after it was sent (an unlink and rmdir take microseconds).
            remove_photo(relay.store.photos, photo.relative)
        self.log.info("Relay: sent a photo for {fp} ({size} bytes{how})", fp=fingerprint(paired_id),
                      size=photo.size, how=", awaiting confirmation" if photo.receipt else "")
        return None

    async def _send_file(self, request, relay: Relay, photo, headers: dict) -> None:
        """
        Stream the photo; returns once it is all handed to the connection,
        raises if the reader went away first.
        """
        f = open(inside(relay.store.photos, photo.relative), "rb")
        request.setResponseCode(200)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % os.fstat(f.fileno()).st_size)
        finished = request.notifyFinish()
        NoRangeStaticProducer(request, f).start()  # closes f when done or stopped
        await finished

    async def _confirm(self, relay: Relay, paired_id: str, receipt: str):
        photo = relay.queue.confirm(paired_id, receipt)
        if photo is None:
            return Answer(404, b"Unknown receipt: the photo was already confirmed, or given out again")
        await self.state.in_thread(remove_photo, relay.store.photos, photo.relative)
        self.log.info("Relay: delivery confirmed for {fp} ({size} bytes)",
                      fp=fingerprint(paired_id), size=photo.size)
        return Answer(200, b"deleted")


def _query(request, name: bytes) -> Optional[str]:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


def _wait_seconds(value: Optional[str]) -> float:
    if value is None:
        return 0
    try:
        seconds = float(value)
    except ValueError:
        raise Rejected("wait must be a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:
        raise Rejected(f"wait must be from 0 to {MAX_WAIT} seconds")
    return seconds


def _mime(relative: str) -> bytes:
    extension = "." + relative.rsplit(".", 1)[-1].lower() if "." in relative else ""
    return _MIME_BY_EXTENSION.get(extension, "application/octet-stream").encode()
