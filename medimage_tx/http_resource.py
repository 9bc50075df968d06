"""
The HTTP side: the site and its limits, the streaming request, and the
routes (uploads, checks, pages, relay reads, pairing).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Optional

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, pages, server
from twisted.web.resource import Resource

from .web.app_families import app_family
from .admin import Access
from .admin.login import GetSession, LoginPage, LogoutPage
from .addons.web import AddonResource
from .web.connection_limits import ConnectionCaps, connection_budget, open_file_limit, uses_select
from .errors import Rejected, TryLater
from .identity import fingerprint
from .photos.intake import accepted_parts, checked_extension, relay_check_path, relay_parts
from .web.pairing import PairingService, PairPage
from .relay import ReadResource
from .web.request_budget import (
    PC_TOTAL_BURST,
    PC_TOTAL_RATE,
    PER_ADDRESS_BURST,
    PER_ADDRESS_RATE,
    RELAY_TOTAL_BURST,
    RELAY_TOTAL_RATE,
    RequestBudget,
    Ticket,
    address_key,
)
from .photos.multipart import ENVELOPE_ALLOWANCE, MultipartReceiver, boundary_of
from .web.pages import DiscoveryPage, LoadAverage, StatusPage
from .state import ServerState
from .admin.pages import add_admin_pages
from .web.answers import (
    NOT_READABLE,
    Answer,
    StateResource,
    add_config_headers,
    answer_for_failure,
    answer_now,
    render_async,
)

log = Logger()

RECEIVED = b"Received upload successfully!"
UPLOAD_READ_SIZE = 256 * 1024
#: A relay on the internet serves many clinics; one address gets this many
#: connections at once (a clinic's PCs and phones behind one NAT fit).
RELAY_CONNECTIONS_PER_ADDRESS = 32
#: A phone on the clinic's WiFi opens one or two at a time (an upload, the
#: app's scan or ping); a browser at most six per server.
PC_CONNECTIONS_PER_ADDRESS = 32
#: Connections at once in all, unless the open-file limit allows fewer
#: (connection_limits.connection_budget).
RELAY_CONNECTIONS = 10_000
PC_CONNECTIONS = 1_000


@dataclass
class Limits:
    """
    Limits on what one client may make the server hold (issue: hostile input).
    """

    header_seconds: float = 30.0  # from connect (or a kept-alive request's first byte) to its last header
    body_base_seconds: float = 60.0  # plus the body at the slowest rate we wait for:
    min_body_rate: float = 16 * 1024  # bytes/s (128 kbit/s, a poor 3G upload)
    small_body: int = 64 * 1024  # the most a non-upload body may carry
    connections_per_address: Optional[int] = None  # default: per role, below
    connections_in_total: Optional[int] = None  # default: per role, within the open-file limit
    # Requests answered per second (request_budget.py); more wait their turn.
    requests_per_address: float = PER_ADDRESS_RATE
    request_burst_per_address: float = PER_ADDRESS_BURST
    requests_in_total: Optional[float] = None  # default: per role
    request_burst_in_total: Optional[float] = None


class MedImageChannel(http.HTTPChannel):
    """
    HTTP/1.1 with tighter limits than Twisted's defaults: 64 headers, 8 KiB
    request line, 16 KiB of headers in all; a request's line and headers
    must arrive within C{header_seconds} of the connection (or, on a
    keep-alive connection, of the request's first byte); and caps on
    connections per client address and in total.
    """

    maxHeaders = 64
    MAX_LENGTH = 8192
    totalHeadersSize = 16384
    _counted: Optional[str] = None
    _header_deadline = None
    _awaiting_request = False

    _awaiting_address = False
    budget_key = ""  # the client, as the request budget counts it

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.site.state.config.proxyProtocol:
            # Behind a PROXY-protocol balancer the client's address is known
            # once the balancer's header is read: at the first data.
            self._awaiting_address = True
            self._start_header_deadline()
        else:
            self._admit()

    def _admit(self) -> bool:
        """
        Count this connection against its address's and the total caps;
        False (and the connection aborted) when there is no room.
        """
        host = getattr(self.transport.getPeer(), "host", "")
        if not self.site.admit(host):
            self.transport.abortConnection()
            return False
        self._counted = host
        self.budget_key = address_key(host)
        self._start_header_deadline()
        return True

    def _start_header_deadline(self) -> None:
        self._stop_header_deadline()
        self._header_deadline = self.site.state.reactor.callLater(
            self.site.limits.header_seconds, self._too_slow)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        log.info("Cut off a client that sent its request too slowly")
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_address:
            self._awaiting_address = False
            if not self._admit():
                return
        if self._awaiting_request and data:
            # The next request on a kept-alive connection: its time starts
            # with its first byte (the idle timeout covers the wait for it).
            self._awaiting_request = False
            self._start_header_deadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._stop_header_deadline()  # the request's body deadline takes over
        super().allHeadersReceived()

    def requestDone(self, request) -> None:
        self._awaiting_request = True
        super().requestDone(request)

    # Reading from the client, paused while a request waits its turn in the
    # request budget.  The transport tells the channel (a push producer for
    # it) when the client stops reading our answers; Twisted then keeps the
    # connection paused too, and so must a request whose turn comes.
    client_reads_answers = True

    def pauseProducing(self) -> None:
        self.client_reads_answers = False
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.client_reads_answers = True
        super().resumeProducing()

    def pause_reading(self) -> None:
        reading = IPushProducer(self.transport, None)
        if reading is not None:
            reading.pauseProducing()

    def resume_reading(self) -> None:
        reading = IPushProducer(self.transport, None)
        if reading is not None:
            reading.resumeProducing()

    def connectionLost(self, reason) -> None:
        self._stop_header_deadline()
        if self._counted is not None:
            self.site.release(self._counted)
            self._counted = None
        super().connectionLost(reason)


class MedImageRequest(server.Request):
    """
    A request whose C{multipart/form-data} body is parsed as it arrives,
    straight into a temporary file next to the photos folder.  A request
    that comes in too slowly (slowloris) is cut off.
    """

    receiver: Optional[MultipartReceiver] = None
    body_too_large = False
    _chunked = False
    _refused = False
    body_size = 0  # bytes of body received, for the log
    _deadline = None

    def _set_deadline(self, seconds: Optional[float]) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if seconds is not None:
            self._deadline = self.channel.site.state.reactor.callLater(seconds, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        log.info("Cut off a client that sent its request too slowly")
        self.channel.transport.abortConnection()

    def gotLength(self, length: Optional[int]) -> None:
        state: ServerState = self.channel.site.state
        limits: Limits = self.channel.site.limits
        # Time for the body at the slowest rate we accept, for no more than
        # the largest body we would take: a huge declared length buys nothing.
        largest = state.config.maxUploadSize + ENVELOPE_ALLOWANCE
        expected = min(length if length is not None else largest, largest)
        self._set_deadline(limits.body_base_seconds + expected / limits.min_body_rate)
        boundary = boundary_of(self.requestHeaders.getRawHeaders(b"content-type", [b""])[0])
        self.content = BytesIO()
        self._chunked = length is None
        if boundary is None or len(boundary) > 200:
            return  # a small body at most: kept in memory, the rest dropped
        # Read big bodies in bigger pieces: a quarter of the CPU per photo
        # went to handling 64 KiB reads one by one.
        self.channel.transport.bufferSize = UPLOAD_READ_SIZE
        self.receiver = MultipartReceiver(
            boundary, state.store.temp, state.config.maxUploadSize, length
        )
        self.notifyFinish().addBoth(self._discard_upload)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self.body_size += len(data)
        if self.receiver is not None:
            self.receiver.write(data)
            if self.receiver.refuse_now:
                self._refuse_now(self.receiver.error)
        elif self.content.tell() + len(data) <= self.channel.site.limits.small_body:
            self.content.write(data)
        else:
            self.body_too_large = True
            if self._chunked:
                self._refuse_now(Rejected("The request body is too large"))

    def _refuse_now(self, error: Exception) -> None:
        """
        The body broke a hard limit (finding 4): answer now, in the form the
        sending app reads as "not stored", and close instead of reading the
        rest.  Like Twisted's own early 400, written straight to the wire.
        """
        self._refused = True
        self._set_deadline(None)
        content_type = self.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        answer = answer_for_failure(Failure(error), app_family(content_type))
        phrase = answer.phrase or http.RESPONSES.get(answer.code, b"Refused")
        headers = {b"content-type": answer.content_type, b"content-length": b"%d" % len(answer.body),
                   b"connection": b"close", **answer.headers}
        log.info("Refused a request body at once: {reason}", reason=str(error))
        self.channel.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (answer.code, phrase)
            + b"".join(b"%s: %s\r\n" % item for item in headers.items())
            + b"\r\n" + answer.body)
        self.channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # already answered, and the connection is closing
        self._set_deadline(None)  # all in: from here on it is our time, not the client's
        channel = self.channel
        ticket = channel.site.budget.request(
            channel.budget_key, lambda: self._take_turn(command, path, version))
        if ticket is None:
            super().requestReceived(command, path, version)
            return
        # Over budget: stop reading this connection (a paused socket costs
        # nothing, and the client's sends back up) until its turn.
        self._budget_ticket = ticket
        channel.pause_reading()

    _budget_ticket: Optional[Ticket] = None

    def _take_turn(self, command: bytes, path: bytes, version: bytes) -> None:
        self._budget_ticket = None
        channel = self.channel
        if channel is None:
            return  # the connection went while it waited
        if channel.client_reads_answers:  # else stay paused, as Twisted does, until the client reads
            channel.resume_reading()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason) -> None:
        self._set_deadline(None)
        if self._budget_ticket is not None:
            self.channel.site.budget.cancel(self._budget_ticket)
            self._budget_ticket = None
        super().connectionLost(reason)

    def _discard_upload(self, result: Any) -> None:
        if self.receiver is not None:
            self.receiver.discard()


class PhotoUpload(StateResource):
    """
    C{POST /api/photo} (PROTOCOL.md A1).
    """

    def render_POST(self, request: MedImageRequest):
        content_type = request.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        return render_async(request, self.receive_logged, family=app_family(content_type))

    async def receive_logged(self, request: MedImageRequest) -> Answer:
        try:
            return await self.receive(request)
        except (Rejected, TryLater) as e:
            # So IT can see why a doctor's phone showed an error.  The
            # reason never holds the patient's name; the file name would.
            refused = isinstance(e, Rejected)
            log.warn("{what} an upload from {client}: {reason} ({size} bytes received){after}",
                     what="Refused" if refused else "Could not store", reason=str(e),
                     client=getattr(request.getClientAddress(), "host", "?"), size=request.body_size,
                     after="" if refused else "; the phone keeps the photo and sends it again")
            raise

    async def receive(self, request: MedImageRequest) -> Answer:
        started = time.monotonic()
        receiver = request.receiver
        if receiver is None:
            raise Rejected("Expected a multipart/form-data upload with the photo in the field 'file1'")
        received = receiver.finish()
        receiver.disown()
        config, relay = self.state.config, self.state.relay
        try:
            if relay is not None:
                paired_id, parts = relay_parts(
                    received.filename, checked_extension(received, config), config)
            else:
                parts = accepted_parts(received, config)
        except Exception:
            os.close(received.fd)
            os.unlink(received.temp_path)
            raise
        if relay is not None:
            # Durable in the relay's store (fsynced file, or committed row)
            # before the 200; no room: try-later.  A phone that hangs up now
            # does not stop the store: what is stored is queued, and its
            # room accounted for, all the same.
            _, duplicate = await detached(ensureDeferred(relay.store.put(
                paired_id, parts, received.temp_path, received.fd, received.size, config)))
            self.state.stats.photos_received += 0 if duplicate else 1
            self.state.stats.bytes_received += 0 if duplicate else received.size
            # Never a patient folder or file name in a relay's log.
            log.info("Relay: queued a photo for {fp} ({size} bytes) in {ms:.0f} ms",
                     fp=fingerprint(paired_id), size=received.size,
                     ms=(time.monotonic() - started) * 1000)
            return Answer(200, RECEIVED)
        stored = await self.state.store_photo(received.temp_path, received.fd, parts)
        if not stored.duplicate:
            self.state.stats.photos_received += 1
            self.state.stats.bytes_received += received.size
            if self.state.activity is not None:
                self.state.activity.note(stored.relative, "phone")
        log.info(
            "Received {path} ({size} bytes) in {ms:.0f} ms{again}",
            path=stored.relative, size=received.size,
            ms=(time.monotonic() - started) * 1000,
            again=" (a retry: already stored)" if stored.duplicate else "",
        )
        return Answer(200, RECEIVED)


def detached(d: Deferred) -> Deferred:
    """
    C{d}'s result, through a Deferred whose cancelling leaves C{d} running.
    """
    result: Deferred = Deferred()
    d.chainDeferred(result)
    return result


class Check(StateResource):
    """
    C{GET /check=<name>} (PROTOCOL.md A3): only a relay holds photos that
    wait to be read.
    """

    def __init__(self, state: ServerState, name: bytes):
        super().__init__(state)
        self.name = name

    def render_GET(self, request):
        relay = self.state.relay
        if not self.state.config.allowPhotosLeaving or relay is None:
            return answer_now(request, Answer(400, NOT_READABLE))
        return render_async(request, self._check, relay)

    async def _check(self, request, relay) -> Answer:
        relative = relay_check_path(self.name.decode("utf-8", "replace"), self.state.config)
        waiting = relative is not None and await relay.store.holds(relative)
        return Answer(200, b"true" if waiting else b"false")


class Preflight(Resource):
    """
    C{OPTIONS} on any path: 200; with the config headers (CORS) on the
    routes the apps call, without them (so a browser refuses the
    cross-origin request) on the PC's own pages.
    """

    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-length", b"0")
        return b""


#: The first path segments of the routes the apps call cross-origin: they
#: carry the config headers.  C{/} decides for itself (L{StatusPage}).
APP_ROUTES = (b"api", b"read")


def is_app_route(segment: bytes) -> bool:
    return segment in APP_ROUTES or segment.startswith(b"check=")


class Root(Resource):
    def __init__(self, state: ServerState):
        super().__init__()
        self.state = state
        self.putChild(b"", StatusPage(state))
        self.putChild(b"load", LoadAverage(state))
        self.putChild(b"discovery", DiscoveryPage(state))
        api = Resource()
        api.putChild(b"photo", PhotoUpload(state))
        self.putChild(b"api", api)
        self.putChild(b"read", ReadResource(state))
        admin = Resource()
        admin.putChild(b"login", LoginPage(state))
        admin.putChild(b"logout", LogoutPage(state))
        add_admin_pages(admin, state)
        self.putChild(b"admin", admin)
        addon = AddonResource(state)
        addon.putChild(b"get-session", GetSession(state))  # the original's basic-authentication
        self.putChild(b"addon", addon)
        if state.pairing is not None:
            service = PairingService(state.pairing)
            self.putChild(b"med-genid.php", service)
            self.putChild(b"pair", service)
        else:
            self.putChild(b"pair", PairPage(state))

    def getChildWithDefault(self, path: bytes, request):
        app_route = is_app_route(path)
        if app_route or (request.method == b"OPTIONS" and path == b""):
            add_config_headers(request, self.state.config.headers)
        if request.method == b"OPTIONS":
            return Preflight()
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request):
        if path.startswith(b"check="):
            return Check(self.state, path[len(b"check="):])
        return pages.notFound()


class MedImageSite(server.Site):
    requestFactory = MedImageRequest
    protocol = MedImageChannel

    def __init__(self, state: ServerState, limits: Optional[Limits] = None,
                 interface: Optional[str] = None):
        if state.access is None:
            state.access = Access(state, listen_address=interface)
        # timeout: a connection idle this long is closed.
        super().__init__(Root(state), parsePOSTFormSubmission=False, timeout=75)
        self.state = state
        self.limits = limits or Limits()
        relay = state.relay is not None
        if self.limits.connections_per_address is None:
            self.limits.connections_per_address = (RELAY_CONNECTIONS_PER_ADDRESS if relay
                                                   else PC_CONNECTIONS_PER_ADDRESS)
        if self.limits.connections_in_total is None:
            self.limits.connections_in_total = connection_budget(
                RELAY_CONNECTIONS if relay else PC_CONNECTIONS, open_file_limit(), uses_select(state.reactor))
        limits = self.limits
        self.budget = RequestBudget(
            state.reactor, limits.requests_per_address, limits.request_burst_per_address,
            limits.requests_in_total or (RELAY_TOTAL_RATE if relay else PC_TOTAL_RATE),
            limits.request_burst_in_total or (RELAY_TOTAL_BURST if relay else PC_TOTAL_BURST))
        self.caps = ConnectionCaps(limits.connections_per_address, limits.connections_in_total)
        self._refusals_logged_at: Optional[float] = None
        self.displayTracebacks = False

    @property
    def connections(self) -> dict[str, int]:
        """
        Connections held per client (IPv4 address or IPv6 /64).
        """
        return self.caps.by_client

    @property
    def open_connections(self) -> int:
        return self.caps.open

    def admit(self, host: str) -> bool:
        """
        Count a new connection from C{host}, or refuse it (C{False}) when
        the caps are reached (L{ConnectionCaps}).
        """
        limits = self.limits
        # The limits may be tuned after the site is made.
        self.caps.per_address = limits.connections_per_address
        self.caps.total = limits.connections_in_total
        if not self.caps.admit(host):
            now = self.state.reactor.seconds()
            if self._refusals_logged_at is None or now - self._refusals_logged_at >= 60:
                self._refusals_logged_at = now
                log.warn("Refusing connections: {open} open (at most {total}; {per} per address, "
                         "the last {kept} kept for clients holding few)",
                         open=self.caps.open, total=limits.connections_in_total,
                         per=limits.connections_per_address, kept=self.caps.reserved)
            return False
        return True

    def release(self, host: str) -> None:
        self.caps.release(host)

    def stopFactory(self) -> None:
        self.budget.stop()
        super().stopFactory()

    def log(self, request):
        # The access log would name patients' folders and files; the
        # application logs what is needed instead.
        pass


def make_site(state: ServerState, interface: Optional[str] = None) -> MedImageSite:
    """
    @param interface: the address the server listens on (one of its own
        names for the C{Host} check).
    """
    return MedImageSite(state, interface=interface)
