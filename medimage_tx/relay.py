"""
The internet relay's side (PROTOCOL.md A4, B4): L{Relay} keeps the queue of
photos per paired id and wakes long polls; L{ReadResource} serves
C{HEAD|GET|DELETE /read/<id>[/<receipt>]}.  The PC's side, which pulls from
a relay, is L{medimage_tx.pc.puller}.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.static import NoRangeStaticProducer

from .errors import Rejected, TryLater
from .identity import PAIRED_ID, fingerprint
from .web.answers import NOT_READABLE, Answer, answer_now, render_async
from .relay_store.known_ids import KNOWN_SECONDS
from .web.request_budget import address_key
if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from .relay_store import RelayStore
    from .state import ServerState
from .web.relay_headers import ACK_HEADER, RECEIPT_HEADER, RELAY_FEATURES, RELAY_FEATURES_VALUE


MAX_WAIT = 60
NOTHING = b"none"
_CALLBACK = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,3}")

_MIME_BY_EXTENSION = {
    ".jpg": "image/jpeg", ".pdf": "application/pdf", ".png": "image/png", ".mp4": "video/mp4",
    ".mp3": "audio/mpeg", ".m4a": "audio/mp4", ".heic": "image/heic", ".heif": "image/heif",
    ".csv": "text/csv", ".json": "application/json",
}


# Relay role


class Relay:
    """
    The relay's store (L{medimage_tx.relay_store}: local disk, or PostgreSQL
    shared by several nodes) and this node's long-poll waiters, woken when
    the store says a photo became readable for their id.
    """

    log = Logger()

    def __init__(self, store: RelayStore, clock: IReactorTime):
        self.store = store
        self.clock = clock
        self._waiters: dict[str, list[Deferred]] = {}
        store.on_available = self._wake

    def wait(self, paired_id: str, timeout: float) -> Deferred:
        """
        Fires (with None) when a photo becomes available for C{paired_id},
        or after C{timeout} seconds.  No timers run per idle waiter beyond
        its one timeout.
        """
        d: Deferred = Deferred(lambda d: self._forget(paired_id, d))
        self._waiters.setdefault(paired_id, []).append(d)
        call = self.clock.callLater(timeout, self._time_out, paired_id, d)

        def stop_timer(result: object) -> object:
            if call.active():
                call.cancel()
            return result

        d.addBoth(stop_timer)
        return d

    def waiting(self, paired_id: str) -> int:
        """
        How many long polls on this node wait for C{paired_id}.
        """
        return len(self._waiters.get(paired_id, ()))

    def _time_out(self, paired_id: str, d: Deferred) -> None:
        self._forget(paired_id, d)
        d.callback(None)

    def _forget(self, paired_id: str, d: Deferred) -> None:
        waiters = self._waiters.get(paired_id, [])
        if d in waiters:
            waiters.remove(d)
        if not waiters:
            self._waiters.pop(paired_id, None)

    def _wake(self, paired_id: Optional[str]) -> None:
        """
        Wake the waiters for C{paired_id}; None wakes all (the store may
        have missed news, e.g. while reconnecting to its database).
        """
        if paired_id is None:
            waiting, self._waiters = self._waiters, {}
            for ds in waiting.values():
                for d in ds:
                    d.callback(None)
            return
        for d in self._waiters.pop(paired_id, []):
            d.callback(None)



class RelayExpiry(Service):
    """
    Removes photos nobody collected within C{relayExpiryDays}: at start and
    every hour.  Logs one line per pairing, by fingerprint only.  With a
    shared store every node sweeps; a photo is removed once.
    """

    log = Logger()
    name = "relay-expiry"  # type: ignore[assignment]  # Twisted's Service has name = None, unannotated
    interval = 3600.0

    def __init__(self, state: ServerState, relay: Relay, clock: IReactorTime):
        self.state = state
        self.relay = relay
        self.clock = clock
        self._loop: Optional[LoopingCall] = None
        #: The last sweep (fired once the photos are gone).
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

    def sweep(self) -> Deferred:
        relay, days = self.relay, self.state.config.relayExpiryDays
        self.removing = ensureDeferred(relay.store.expire_older_than(self.clock.seconds() - days * 86400))
        self.removing.addCallbacks(self._report, self._failed, callbackArgs=(days,))
        forgetting = ensureDeferred(relay.store.forget_unread(self.clock.seconds() - KNOWN_SECONDS))
        forgetting.addErrback(self._failed)
        return self.removing

    def _report(self, expired: list, days: float) -> None:
        per_id: dict[str, list[int]] = {}
        for photo in expired:
            per_id.setdefault(photo.paired_id, []).append(photo.size)
        for paired_id, sizes in per_id.items():
            self.log.warn("Relay: removed {count} photo(s) ({size} bytes) for {fp}: not collected "
                          "within {days:g} days (relayExpiryDays)", count=len(sizes), size=sum(sizes),
                          fp=fingerprint(paired_id), days=days)

    def _failed(self, failure) -> None:
        # The next hour tries again (a database that was away, say).
        if not failure.check(TryLater):
            self.log.failure("Relay: the expiry sweep failed", failure)


class NotARelay(Resource):
    """
    C{/read/...} and C{/check=...} on a clinic PC: as on the original PC,
    nothing here waits to be read.
    """

    isLeaf = True

    def render(self, request):
        return answer_now(request, Answer(400, NOT_READABLE))


class ReadResource(Resource):
    """
    C{HEAD|GET /read/<id>} and C{DELETE /read/<id>/<receipt>}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, state: ServerState, relay: Relay):
        super().__init__()
        self.state = state
        self.relay = relay

    def render(self, request):
        request.setHeader(RELAY_FEATURES, RELAY_FEATURES_VALUE)
        if request.method not in (b"GET", b"HEAD", b"DELETE"):
            return answer_now(request, Answer(405, b"Use GET, HEAD or DELETE"))
        return render_async(request, self._read, self.relay)

    async def _read(self, request, relay: Relay):
        path = [p for p in request.postpath if p]
        if not path or not PAIRED_ID.fullmatch(path[0].decode("latin-1")) or len(path) > 2:
            raise Rejected("Expected /read/<id>: a paired id is 16 to 20 letters and digits")
        paired_id = path[0].decode()
        # A clinic PC reads this id: its photos need not share the small
        # pool of ids nobody reads (relayUnknownBytes).  A browser's fetch
        # is no PC: any web page can have its visitors' browsers fetch
        # /read/<made-up id>, each visitor's address making 4 ids known.
        if not from_a_browser(request):
            await relay.store.note_reader(paired_id, address_key(client_host(request)))
        if request.method == b"DELETE":
            if len(path) != 2:
                raise Rejected("Expected DELETE /read/<id>/<receipt>")
            return await self._confirm(relay, paired_id, path[1].decode("ascii", "replace"))
        callback = _query(request, b"callback")
        if callback is not None and not _CALLBACK.fullmatch(callback):
            raise Rejected("callback must be a plain JavaScript identifier")
        wait = _wait_seconds(_query(request, b"wait"))
        if wait and request.method == b"GET" and callback is None:
            return await self._wait_and_deliver(request, relay, paired_id, wait)
        photo = await relay.store.peek(paired_id)
        if callback is not None:
            # A script tag cannot use a photo: JSONP only says what waits.
            text = photo.file_name if photo is not None else NOTHING.decode()
            body = f"{callback}({json.dumps(text)})".encode()
            return Answer(200, body, b"application/javascript")
        if photo is None:
            return Answer(200, NOTHING)
        if request.method == b"HEAD":
            return Answer(200, b"", _mime(photo.relative), {b"file-name": photo.file_name.encode()})
        return await self._deliver(request, relay, paired_id)

    async def _wait_and_deliver(self, request, relay: Relay, paired_id: str, wait: float):
        """
        A long poll: send the first photo that becomes readable within
        C{wait} seconds, or C{none} once they are up.
        """
        deadline = relay.clock.seconds() + wait
        while True:
            remaining = deadline - relay.clock.seconds()
            # Listen before looking: a photo stored while the store is
            # asked wakes this poll instead of passing it by.
            woken = relay.wait(paired_id, remaining) if remaining > _LAST_LOOK else None
            try:
                delivery = await relay.store.lease(paired_id)
            except BaseException:
                _stop_waiting(woken)
                raise
            if delivery is not None:
                _stop_waiting(woken)
                return await self._send(request, relay, paired_id, delivery)
            if woken is None:
                return Answer(200, NOTHING)
            # Woken by a photo (leased at the top: one trip to the store),
            # by the time running out (one last look), or for nothing: a
            # store reconnecting to its database wakes every poll, and
            # another reader may have leased the photo first.
            await woken

    async def _deliver(self, request, relay: Relay, paired_id: str):
        """
        Send the oldest readable photo, or C{none}.
        """
        # Sent photos are leased: hidden until confirmed, back if the
        # sending fails or the lease runs out (a node that died).
        delivery = await relay.store.lease(paired_id)
        if delivery is None:
            return Answer(200, NOTHING)  # another reader leased it first
        return await self._send(request, relay, paired_id, delivery)

    async def _send(self, request, relay: Relay, paired_id: str, delivery):
        photo = delivery.photo
        headers = {b"file-name": photo.file_name.encode(), b"content-type": _mime(photo.relative)}
        acknowledged = request.getHeader(ACK_HEADER) == b"1"
        if acknowledged:
            digest, content_digest = delivery.digest_headers
            headers.update({RECEIPT_HEADER: photo.receipt.encode(), b"digest": digest,
                            b"content-digest": content_digest})
        try:
            await self._send_file(request, delivery, headers)
        except BaseException:
            # A reader cut off because the store could not be read has not
            # got the photo, whatever it was told: give it out again now.
            if not acknowledged or delivery.cut_short:
                relay.store.release(delivery).addErrback(lambda failure: failure.trap(TryLater))
            raise
        if not acknowledged:
            # An old reader never confirms: once sent, the photo is gone.
            await relay.store.confirm(paired_id, photo.receipt)
        self.log.info("Relay: sent a photo for {fp} ({size} bytes{how})", fp=fingerprint(paired_id),
                      size=photo.size, how=", awaiting confirmation" if acknowledged else "")
        return None

    async def _send_file(self, request, delivery, headers: dict) -> None:
        """
        Stream the photo; returns once it is all handed to the connection,
        raises if the reader went away first.
        """
        request.setResponseCode(200)
        for name, value in headers.items():
            request.setHeader(name, value)
        if delivery.read_chunk is not None:
            request.setHeader(b"content-length", b"%d" % delivery.photo.size)
            finished = request.notifyFinish()
            producer = ChunkProducer(request, delivery.read_chunk, delivery.photo.size, self.state.reactor)
            await producer.send()
            delivery.cut_short = producer.cut_short
            await finished
            return
        f = delivery.open()
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        request.setHeader(b"content-length", b"%d" % size)
        finished = request.notifyFinish()
        NoRangeStaticProducer(request, f).start()  # closes f when done or stopped
        await finished

    async def _confirm(self, relay: Relay, paired_id: str, receipt: str):
        photo = await relay.store.confirm(paired_id, receipt)
        if photo is None:
            return Answer(404, b"Unknown receipt: the photo was already confirmed, or given out again")
        self.log.info("Relay: delivery confirmed for {fp} ({size} bytes)",
                      fp=fingerprint(paired_id), size=photo.size)
        return Answer(200, b"deleted")


#: How much of a photo a reader from a database store is sent at a time:
#: what one slow reader holds (plus its connection's 64 KiB buffer), as a
#: file on disk costs (Twisted reads files 64 KiB at a time).
CHUNK_BYTES = 64 * 1024
#: A piece the store cannot read for now (its database restarting, say) is
#: asked for again, waiting this long at first and twice as long each time
#: up to 4 s, for this long in all: under the reader's 60 s stall limit.
CHUNK_RETRY_FIRST = 0.25
CHUNK_RETRY_SECONDS = 30.0


class ChunkProducer:
    """
    Sends C{size} bytes read a chunk at a time by C{read_chunk(offset,
    length)} (a Deferred), one chunk in flight and none while the
    connection's buffer is full (a push producer, paused by the transport).
    """

    log = Logger()

    def __init__(self, request, read_chunk: Callable[[int, int], Any], size: int, clock: Any):
        self.request = request
        self.read_chunk = read_chunk
        self.size = size
        self.clock = clock
        #: The connection was cut because the photo could not be read.
        self.cut_short = False
        self._resumed: Optional[Deferred] = None
        self._stopped = False

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()

    async def send(self) -> None:
        """
        Fires once all is written and the answer finished; when the photo
        went away meanwhile (another reader has it now) the connection is
        cut, as a reader that left would be.
        """
        request = self.request
        request.registerProducer(self, True)
        offset = 0
        try:
            while offset < self.size and not self._stopped:
                chunk = await self._read(offset, min(CHUNK_BYTES, self.size - offset))
                if self._stopped:
                    break
                if not chunk:
                    self.cut_short = True
                    if request.channel is not None:
                        request.channel.transport.abortConnection()
                    break
                request.write(chunk)
                offset += len(chunk)
                if self._resumed is not None:
                    await self._resumed
        except CancelledError:
            raise  # the reader went away
        except Exception as e:
            # The headers are sent: the only way left to say "failed" is to
            # cut the connection (the reader then has a short photo and
            # reads again; the lease is released).
            self.log.warn("Relay: could not read a photo to send on ({error}); cut the connection",
                          error=" ".join(str(e).split())[:200] or type(e).__name__)
            self.cut_short = True
            if request.channel is not None:
                request.channel.transport.abortConnection()
            return
        finally:
            if request.channel is not None:
                request.unregisterProducer()
        if offset == self.size and not self._stopped:
            request.finish()

    async def _read(self, offset: int, length: int) -> bytes:
        waited, wait = 0.0, CHUNK_RETRY_FIRST
        while True:
            try:
                return await self.read_chunk(offset, length)
            except TryLater:
                if waited >= CHUNK_RETRY_SECONDS or self._stopped:
                    raise
            await deferLater(self.clock, wait)
            waited += wait
            wait = min(wait * 2, 4.0)


#: Below this many seconds left, a long poll takes its last look.
_LAST_LOOK = 0.001


def _stop_waiting(woken: Optional[Deferred]) -> None:
    if woken is not None:
        woken.addErrback(lambda failure: failure.trap(CancelledError))
        woken.cancel()


def from_a_browser(request) -> bool:
    """
    Whether a request carries what only browsers send (C{Sec-Fetch-Site},
    C{Origin}, C{Referer}); a clinic PC's puller, ours or the original's,
    sends none of them.
    """
    return any(request.getHeader(header) is not None
               for header in (b"sec-fetch-site", b"origin", b"referer"))


def client_host(request) -> str:
    return getattr(request.getClientAddress(), "host", None) or "unknown"


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
