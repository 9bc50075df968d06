"""
The clinic PC's side of the relay (PROTOCOL.md A4, B4): L{RelayPuller} pulls
from C{readProxy}: an acknowledged long poll against a relay that says it
supports B4 (header L{RELAY_FEATURES}), the original HEAD-then-GET every 5 s
otherwise.  A photo is acknowledged only once it is durably stored like a
direct upload, or kept in the held folder when this PC will not file it.

The relay is not trusted (a hostile or compromised relay, issue 9 finding
3): downloads stream to a temporary file, never to memory, and stop at
C{maxUploadSize}; an answer or a body that stalls, or takes longer in
all than a slow line needs for it, is cut off (and every answer's headers
are limited: L{response_limits}).  Against an
original relay (no L{RELAY_FEATURES}), it reads as the original PC does: no
request within C{legacy_interval} (5 s) after a GET, and never the name just
received again at once (an original relay shreds a photo for a second or
two after sending it, and a read then gets other bytes and can crash it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from treq.client import HTTPClient

from ..errors import Rejected, disk_trouble
from ..photos.held import hold, held_usage
from ..photos.naming import DEFAULT_STEM, check_name_bounds, clean_text, safe_component, strip_extension
from ..outbound.proxy_tunnel import make_agent
from ..outbound.response_limits import in_time
from ..web.relay_headers import ACK_HEADER, RECEIPT_HEADER, RELAY_FEATURES
from ..outbound.tls import RelayTLSPolicy, explain, one_line, policy_for, relay_ca_path
from ..photos.multipart import make_temp_file
from ..photos.sniff import HEAD_SIZE, choose_type
from .room import below_floor, held_full

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ..state import ServerState


def photo_parts(file_name: str, allowed_chars: str) -> tuple[tuple[str, ...], str]:
    """
    From a relay's C{file-name} header, C{/<id>/<folders>/<name>}: the safe
    folders and the name (which a hostile relay cannot use to escape).

    @raise Rejected: a name too long or too deep to be one a phone sent.
    """
    check_name_bounds(file_name.replace("\\", "/"), separator="/")
    words = [w for w in file_name.replace("\\", "/").split("/") if w]
    if len(words) > 1:
        words = words[1:]  # the paired id the relay files it under
    cleaned = [safe_component(clean_text(w, allowed_chars)) for w in words]
    folders = tuple(c for c in cleaned[:-1] if c)
    return folders, cleaned[-1] if cleaned else ""


class RelayUnavailable(Exception):
    pass


class RefusedDownload(RelayUnavailable):
    """
    The relay sent something this PC will not take (too large); it is not
    stored and not confirmed.
    """


#: The slowest relay download waited for, as for uploads to this server
#: (C{http_resource.Limits.min_body_rate}): a body may take the stall
#: timeout plus its size at this rate, in all.
MIN_BODY_RATE = 16 * 1024


def backoff_delay(failures: int, start: float, maximum: float) -> float:
    """
    Capped exponential backoff; the exponent is capped too, so an outage of
    days cannot overflow it.
    """
    return min(maximum, start * 2 ** min(failures - 1, 30))


class RelayPuller(Service):
    """
    Pulls photos from C{readProxy} into the PC's store, for as long as it
    runs.  Reads config afresh every round, so a new C{readProxy} (after
    pairing) takes effect at once.

    @ivar delivered: a list of callables, each called with the relative
        path of every photo stored from the relay.
    @ivar held: a list of callables, each called with the path of every
        file kept in the held folder, once it is confirmed to the relay.
    """

    log = Logger()

    def __init__(self, state: ServerState, reactor: Any, clock: Optional[IReactorTime] = None, *,
                 legacy_interval: float = 5.0,
                 long_poll: int = 30, backoff_start: float = 1.0, backoff_max: float = 60.0,
                 answer_timeout: float = 30.0, stall_timeout: float = 60.0,
                 room_interval: float = 30.0):
        self.state = state
        self.reactor = reactor
        self.clock = clock or reactor
        self.legacy_interval = legacy_interval
        #: Seconds to wait for an answer's headers (beyond a long poll's wait),
        #: and for the next bytes of a body, before cutting the relay off.
        self.answer_timeout = answer_timeout
        self.stall_timeout = stall_timeout
        self._legacy_get = False  # this round made a GET of an original relay
        self._last_received: Optional[tuple[str, float]] = None  # legacy: (file-name, when)
        self.long_poll = long_poll
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.delivered: list = []
        self.held: list = []
        self._loop: Optional[Deferred] = None
        self._pool: Optional[HTTPConnectionPool] = None
        self._supports_ack: Optional[bool] = None
        self._outage: Optional[str] = None
        self._tls: Optional[RelayTLSPolicy] = None
        self._read_url = ""
        self._web_proxy = ""
        self._generation = 0
        #: Seconds between looks at the disk and the held folder while there
        #: is no room to fetch.
        self.room_interval = room_interval
        self._paused: Optional[str] = None
        self._held: Optional[tuple[int, int]] = None  # (files, bytes), kept as files are held

    @property
    def paused(self) -> Optional[str]:
        """
        Why photos are not fetched from the relay now (one line: the disk
        is below C{minFreeBytes}, or the held folder is full), or L{None}.
        """
        return self._paused

    @property
    def outage(self) -> Optional[str]:
        """
        Why the relay cannot be reached now (one line), or L{None}.
        """
        return self._outage

    def startService(self) -> None:
        super().startService()
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.maxPersistentPerHost = 2
        self._restart()

    def stopService(self):
        super().stopService()
        self._generation += 1
        if self._loop is not None:
            self._loop.cancel()
        pool, self._pool = self._pool, None
        return pool.closeCachedConnections() if pool else None

    def _restart(self) -> None:
        self._generation += 1
        if self._loop is not None:
            self._loop.cancel()
        self._loop = ensureDeferred(self._run(self._generation))
        self._loop.addErrback(lambda f: None if f.check(CancelledError) else
                              self.log.failure("The relay puller stopped", f))

    def config_changed(self) -> None:
        """
        Config was replaced: drop the current wait so that a new readProxy
        or webProxy is used now, not after the current long poll.
        """
        config = self.state.config
        if self.running and (config.readProxy, config.webProxy) != (self._read_url, self._web_proxy):
            self._supports_ack = None
            self._restart()

    async def _run(self, generation: int) -> None:
        failures = 0
        while self.running and generation == self._generation:
            config = self.state.config
            self._read_url, self._web_proxy = config.readProxy, config.webProxy
            if not (config.readProxy and config.allowGettingRemotePhotos) or config.allowPhotosLeaving:
                await deferLater(self.clock, 1.0)
                continue
            if not await self._room_to_fetch(config):
                await deferLater(self.clock, self.room_interval)
                continue
            try:
                got = await self._pull_once(config)
            except GeneratorExit:
                raise
            except (Exception, CancelledError) as e:
                if isinstance(e, CancelledError) and (generation != self._generation or not self.running):
                    raise  # this loop was stopped or replaced
                # Else a request was cancelled by its time limit: an outage.
                if generation != self._generation:
                    return  # cancelled for a new config; the new loop runs
                failures += 1
                await self._note_outage(e, config)
                delay = backoff_delay(failures, self.backoff_start, self.backoff_max) * random.uniform(0.5, 1.0)
                if self._legacy_get:
                    delay = max(delay, self.legacy_interval)  # the pause after a GET holds here too
                await deferLater(self.clock, delay)
                continue
            failures = 0
            if self._outage is not None:
                self.log.info("The relay can be reached again")
                self._outage = None
            if not self._supports_ack and (not got or self._legacy_get):
                # An original relay: nothing sooner than legacy_interval after
                # a GET (it shreds what it sent for a second or two).
                await deferLater(self.clock, self.legacy_interval)

    async def _room_to_fetch(self, config) -> bool:
        """
        Whether there is room for what the relay may send: the disk above
        C{minFreeBytes}, the held folder below its caps.  While there is
        not, the photos wait on the relay (whose quota then tells phones to
        try later); one warning when it stops, one line when it goes on.
        """
        data_dir = self.state.store.data_dir
        # The held folder is listed (in a thread) at the first look, and
        # again only while it is full (the clinic may have emptied it).
        recount = self._held is None or held_full(data_dir, self._held, config) is not None
        why, held = await self.state.in_thread(_look_at_room, data_dir, config, recount)
        if held is not None:
            self._held = held
        assert self._held is not None  # counted at the first look (recount)
        why = why or held_full(data_dir, self._held, config)
        if why is not None:
            if self._paused is None:
                self.log.warn("Not fetching photos from the relay: {reason}. They wait on the relay; "
                              "looking again every {interval:g} s.", reason=why, interval=self.room_interval)
            self._paused = why
            return False
        if self._paused is not None:
            self.log.info("Fetching photos from the relay again: there is room")
            self._paused = None
        return True

    async def _note_outage(self, error: Exception, config) -> None:
        # One warning per outage, in words IT can act on (a refused
        # certificate says why); each retry only at debug level (--verbose).
        first, self._outage = self._outage is None, one_line(error)
        self._supports_ack = None  # ask again once it is back
        if first:
            reason = await explain(error, config.readProxy, relay_ca_path(config), direct=not config.webProxy,
                                   clock=self.clock)
            self.log.warn("Cannot get photos from the relay: {reason}. Retrying with backoff.",
                          reason=reason)
        else:
            self.log.debug("The relay still cannot be reached: {reason}", reason=self._outage)

    def _client(self, config) -> HTTPClient:
        if self._tls is None or self._tls.ca_file != relay_ca_path(config):
            self._tls = policy_for(config)
        return HTTPClient(make_agent(self.reactor, self._pool, config.webProxy, self._tls))

    async def _pull_once(self, config) -> bool:
        client = self._client(config)
        url = config.readProxy
        self._legacy_get = False
        small = self.answer_timeout
        if not self._supports_ack:
            until = self.clock.seconds() + small
            head = await in_time(client.head(url, unbuffered=True), small, self.clock)
            await self._small_body(head, until)
            _expect_ok(head)
            self._supports_ack = head.headers.getRawHeaders(RELAY_FEATURES) is not None
            if not self._supports_ack:
                name = _header(head, b"file-name")
                if name is None:
                    return False
                if self._just_received(name):
                    # Still the photo we just took: an original relay is
                    # shredding it. Never read it again; look later.
                    self.log.debug("The relay still shows the photo just received; not reading it again")
                    return False
        if self._supports_ack:
            separator = "&" if "?" in url else "?"
            until = self.clock.seconds() + self.long_poll + small
            response = await in_time(client.get(
                f"{url}{separator}wait={self.long_poll}",
                headers=Headers({ACK_HEADER: [b"1"]}), unbuffered=True,
            ), self.long_poll + small, self.clock)
        else:
            until = self.clock.seconds() + small
            response = await in_time(client.get(url, unbuffered=True), small, self.clock)
        if response.headers.getRawHeaders(RELAY_FEATURES) is None:
            self._supports_ack = False
            self._legacy_get = True  # the pause after a GET applies
        if response.code != 200:
            await self._small_body(response, until)
            _expect_ok(response)
        file_name = _header(response, b"file-name")
        if file_name is None:
            await self._small_body(response, until)
            return False
        if not self._supports_ack:
            self._last_received = (file_name, self.clock.seconds())
        received = await self._download(response, config.maxUploadSize)
        stored, held = await self._store(received, file_name, config)
        receipt = _header(response, RECEIPT_HEADER)
        if receipt is not None:
            until = self.clock.seconds() + small
            confirm = await in_time(client.delete(f"{url.split('?')[0].rstrip('/')}/{receipt}", unbuffered=True),
                                    small, self.clock)
            await self._small_body(confirm, until)
            if confirm.code not in (200, 404):
                raise RelayUnavailable(f"the relay answered {confirm.code} to a confirmation")
        if stored is not None:
            self.log.info("Received {path} from the relay ({size} bytes){again}", path=stored.relative,
                          size=received.size, again=" (already stored)" if stored.duplicate else "")
        try:
            await self.state.add_transfer(received.size)
        except Exception:
            self.log.failure("Could not save the transfer count in config.json")
        for notify in list(self.delivered if stored is not None else self.held):
            notify(stored.relative if stored is not None else held)
        return True

    def _just_received(self, name: str) -> bool:
        last = self._last_received
        return last is not None and last[0] == name and \
            self.clock.seconds() - last[1] < 2 * self.legacy_interval

    async def _small_body(self, response, until: float) -> bytes:
        """
        A body that should be short (an empty-queue answer, a confirmation):
        at most 64 KiB is read, all of it by C{until}, when the time for
        the whole answer is up.
        """
        seconds = max(0.0, until - self.clock.seconds())
        download = _BodyToFile(None, 64 * 1024, self.clock, self.stall_timeout, seconds)
        response.deliverBody(download)
        await download.done
        return bytes(download.buffer)

    async def _download(self, response, limit: int) -> "_Download":
        if response.length is not UNKNOWN_LENGTH and response.length > limit:
            response.deliverBody(_Discard())  # closes the connection unread
            self._refused(response.length, limit)
        download = _Download(self.state.store.temp, _header(response, b"digest"))
        expected = limit if response.length is UNKNOWN_LENGTH else response.length
        body = _BodyToFile(download, limit, self.clock, self.stall_timeout,
                           self.stall_timeout + expected / MIN_BODY_RATE)
        try:
            response.deliverBody(body)
            await body.done
            download.check()
        except BaseException:
            download.discard()
            raise
        return download

    def _refused(self, size: int, limit: int):
        raise RefusedDownload(f"the relay sent a file larger than maxUploadSize ({size} > {limit} "
                              "bytes); it was not stored")

    async def _store(self, download: "_Download", file_name: str, config):
        """
        File the download: returns (where it was stored, L{None}), or
        (L{None}, the held file) when this PC does not file it.
        """
        try:
            folders, name = photo_parts(file_name, config.allowedChars)
        except Rejected as e:
            return None, await self._hold(download, file_name, f"its name cannot be used here: {e}")
        allowed = choose_type(download.head, has_nul=download.has_nul,
                              named_extension=os.path.splitext(name)[1].lower(),
                              allowed_types=config.allowedTypes)
        if allowed is None:
            return None, await self._hold(download, file_name, "its type is not in allowedTypes on this PC")
        extensions = {".jpg", ".jpeg"} | {t.extension for t in config.allowedTypes}
        stem = safe_component(strip_extension(name, extensions)) or DEFAULT_STEM
        parts = folders + (stem + allowed.extension,)
        fd, temp = download.hand_over()
        assert self.state.filing is not None  # a PC's, made before its puller (tap.py)
        stored = await self.state.filing.file(temp, fd, parts, download.size, "relay")
        return stored, None

    async def _hold(self, download: "_Download", file_name: str, reason: str) -> Path:
        """
        Keep a file this PC will not file in C{DATA/held/} (durably, before
        it is confirmed), so that nothing the relay was sent is lost.
        """
        fd, temp = download.hand_over()
        try:
            held = await self.state.in_thread(hold, self.state.store.data_dir, temp, fd, file_name, reason)
        except OSError as e:
            raise disk_trouble(e) from None
        if self._held is not None:
            self._held = (self._held[0] + 1, self._held[1] + download.size)
        self.log.warn("Kept a file from the relay in {path}: {reason}. The home page says what to do.",
                      path=held, reason=reason)
        return held


def _look_at_room(data_dir: Path, config, recount: bool) -> tuple[Optional[str], Optional[tuple[int, int]]]:
    # Room above the floor for the largest download, so it is never
    # received only to be refused.
    return below_floor(data_dir, config, config.maxUploadSize), held_usage(data_dir) if recount else None


class _Discard(Protocol):
    def connectionMade(self):
        self.transport.stopProducing()


class _BodyToFile(Protocol):
    """
    Receives a relay's body into a L{_Download} (or, without one, into a
    small buffer), at most C{limit} bytes; the connection is cut when the
    body goes past it, stalls for C{stall_timeout} seconds, or is not
    complete after C{total_timeout} seconds.  C{done} fires when the body
    is complete.
    """

    def __init__(self, download: Optional["_Download"], limit: int, clock: IReactorTime, stall_timeout: float,
                 total_timeout: float):
        self.download, self.limit, self.clock = download, limit, clock
        self.stall_timeout, self.total_timeout = stall_timeout, total_timeout
        self.buffer = bytearray()
        self.size = 0
        self.done: Deferred = Deferred()
        self._timer = self._deadline = None

    def connectionMade(self):
        self._timer = self.clock.callLater(self.stall_timeout, self._stalled)
        self._deadline = self.clock.callLater(self.total_timeout, self._too_slow)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop(RefusedDownload(f"the relay sent more than {self.limit} bytes "
                                       "(maxUploadSize); the file was not stored"))
            return
        try:
            if self.download is not None:
                self.download.write(data)
            else:
                self.buffer += data
        except OSError as e:
            self._stop(e)
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.stall_timeout)

    def _stalled(self) -> None:
        self._timer = None
        self._stop(RelayUnavailable(f"the relay stopped sending for {self.stall_timeout:g} s"))

    def _too_slow(self) -> None:
        self._deadline = None
        self._stop(RelayUnavailable(f"the relay took longer than {round(self.total_timeout, 1):g} s to send "
                                    f"{self.size} bytes"))

    def _stop(self, error: Exception) -> None:
        if not self.done.called:
            self.done.errback(error)
        # deliverBody connects us to the response's producer, not a transport.
        self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for timer in (self._timer, self._deadline):
            if timer is not None and timer.active():
                timer.cancel()
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class _Download:
    """
    A relay photo streaming into a temporary file, checked against the
    relay's digest when it sends one.
    """

    def __init__(self, temp_dir: Path, digest_header: Optional[str]):
        fd, name = make_temp_file(temp_dir, "relay-")
        self.fd: Optional[int] = fd
        self.path = Path(name)
        self.size = 0
        self.head = b""
        self.has_nul = False
        self._hash = hashlib.sha256()
        self._expected = digest_header

    def write(self, data: bytes) -> None:
        if len(self.head) < HEAD_SIZE:
            self.head += data[: HEAD_SIZE - len(self.head)]
        self.has_nul = self.has_nul or b"\x00" in data
        self.size += len(data)
        self._hash.update(data)
        assert self.fd is not None  # written to only before hand_over
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def check(self) -> None:
        if self._expected is None:
            return
        expected = self._expected.strip()
        actual = "sha-256=" + base64.b64encode(self._hash.digest()).decode()
        if expected != actual:
            raise RelayUnavailable("the photo arrived damaged (digest mismatch); it will be sent again")

    def hand_over(self) -> tuple[int, Path]:
        assert self.fd is not None  # handed over once
        fd, self.fd = self.fd, None
        return fd, self.path

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _header(response, name: bytes) -> Optional[str]:
    values = response.headers.getRawHeaders(name)
    return values[0].decode("utf-8", "replace") if values else None


def _expect_ok(response) -> None:
    if response.code != 200:
        raise RelayUnavailable(f"the relay answered {response.code}")
