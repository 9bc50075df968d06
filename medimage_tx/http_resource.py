"""
The HTTP side: the site and its limits, the streaming request, and the
routes (uploads, checks, pages, relay reads, pairing).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from io import BytesIO
from typing import Callable, Optional, TypeVar

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, pages, server
from twisted.web.resource import IResource, Resource

from .web.app_families import app_family
from .admin.login import GetSession, LoginPage, LogoutPage
from .addons.web import AddonResource, PublicFiles
from .web.connection_limits import ConnectionCaps, connection_budget, open_file_limit, uses_select
from .errors import Rejected, TryLater
from .identity import fingerprint
from .photos.intake import accepted_parts, checked_extension, relay_check_path, relay_parts
from .web.pairing import PairingService, PairPage
from .relay import NotARelay, ReadResource, Relay
from .relay_store import PairingDesk
from .pc.filing import Filing
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
from .photos.multipart import ENVELOPE_ALLOWANCE, MultipartReceiver, ReceivedFile, boundary_of
from .web.pages import DiscoveryPage, LoadAverage, StatusPage
from .state import ServerState
from .admin.pages import add_admin_pages
from .admin.pages.layout import Favicon
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
_T = TypeVar("_T")

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
    connections_per_address: int = PC_CONNECTIONS_PER_ADDRESS
    connections_in_total: int = PC_CONNECTIONS  # within the open-file limit: see for_role
    # Requests answered per second (request_budget.py); more wait their turn.
    requests_per_address: float = PER_ADDRESS_RATE
    request_burst_per_address: float = PER_ADDRESS_BURST
    requests_in_total: float = PC_TOTAL_RATE
    request_burst_in_total: float = PC_TOTAL_BURST

    @classmethod
    def for_role(cls, relay: bool, select_reactor: bool = False) -> Limits:
        """
        A relay's or a clinic PC's limits; connections in total fit in the
        open-file limit (and in select()'s, on a select reactor).
        """
        if relay:
            return cls(connections_per_address=RELAY_CONNECTIONS_PER_ADDRESS,
                       connections_in_total=connection_budget(RELAY_CONNECTIONS, open_file_limit(), select_reactor),
                       requests_in_total=RELAY_TOTAL_RATE, request_burst_in_total=RELAY_TOTAL_BURST)
        return cls(connections_in_total=connection_budget(PC_CONNECTIONS, open_file_limit(), select_reactor))


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
    # Set by the site and the reactor before connectionMade: Twisted's types
    # leave the site out, and allow no transport and one that cannot abort.
    site: MedImageSite
    transport: ITCPTransport

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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
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

    channel: MedImageChannel
    # Twisted's Request says content is None; gotLength makes it a file.
    content: BytesIO  # type: ignore[assignment]
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
        # (bufferSize is tcp.Connection's read size, on no Twisted interface.)
        self.channel.transport.bufferSize = UPLOAD_READ_SIZE  # type: ignore[attr-defined]
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
            if self.receiver.refuse_now and self.receiver.error is not None:  # refuse_now comes with its error
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

    def _discard_upload(self, result: object) -> None:
        if self.receiver is not None:
            self.receiver.discard()

    def render(self, resrc) -> None:
        if self.method == b"HEAD" and hasattr(resrc, "render_POST") and not hasattr(resrc, "render_GET"):
            # Twisted answers HEAD with render_GET; a POST-only route (an
            # upload, signing out) failed with a 500 and a traceback.
            resrc = NoHead()
        super().render(resrc)


class NoHead(Resource):
    """
    C{HEAD} of a route that has no C{GET}.
    """

    isLeaf = True

    def render(self, request):
        request.setHeader(b"allow", b"POST, OPTIONS")
        return answer_now(request, Answer(405, b"Use POST"))


class PhotoUpload(StateResource):
    """
    C{POST /api/photo} (PROTOCOL.md A1): what both roles do with an upload
    (read it, log why one was not taken); C{keeper} keeps it, as the
    server's role does (L{FileOnPC}, L{QueueOnRelay}).
    """

    def __init__(self, state: ServerState, keeper: FileOnPC | QueueOnRelay):
        super().__init__(state)
        self.keeper = keeper

    def render_POST(self, request: MedImageRequest):
        content_type = request.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        return render_async(request, self.receive_logged, family=app_family(content_type))

    async def receive_logged(self, request: MedImageRequest) -> Answer:
        started = time.monotonic()
        try:
            return await self.keeper.keep(self.received(request), started)
        except (Rejected, TryLater) as e:
            # So IT can see why a doctor's phone showed an error.  The
            # reason never holds the patient's name; the file name would.
            refused = isinstance(e, Rejected)
            log.warn("{what} an upload from {client}: {reason} ({size} bytes received){after}",
                     what="Refused" if refused else "Could not store", reason=str(e),
                     client=getattr(request.getClientAddress(), "host", "?"), size=request.body_size,
                     after="" if refused else "; the phone keeps the photo and sends it again")
            raise

    @staticmethod
    def received(request: MedImageRequest) -> ReceivedFile:
        receiver = request.receiver
        if receiver is None:
            raise Rejected("Expected a multipart/form-data upload with the photo in the field 'file1'")
        received = receiver.finish()
        receiver.disown()
        return received



def checked(received: ReceivedFile, check: Callable[[], _T]) -> _T:
    """
    C{check()}'s result; if it raises, the upload's temporary file goes.
    """
    try:
        return check()
    except Exception:
        os.close(received.fd)
        os.unlink(received.temp_path)
        raise


class FileOnPC:
    """
    A clinic PC files an upload in its folders.
    """

    def __init__(self, state: ServerState, filing: Filing):
        self.state = state
        self.filing = filing

    async def keep(self, received: ReceivedFile, started: float) -> Answer:
        config = self.state.config
        parts = checked(received, lambda: accepted_parts(received, config))
        stored = await self.filing.file(received.temp_path, received.fd, parts, received.size, "phone")
        log.info(
            "Received {path} ({size} bytes) in {ms:.0f} ms{again}",
            path=stored.relative, size=received.size,
            ms=(time.monotonic() - started) * 1000,
            again=" (a retry: already stored)" if stored.duplicate else "",
        )
        return Answer(200, RECEIVED)


class QueueOnRelay:
    """
    A relay queues an upload for the PC paired with the id in its name.
    """

    def __init__(self, state: ServerState, relay: Relay):
        self.state = state
        self.relay = relay

    async def keep(self, received: ReceivedFile, started: float) -> Answer:
        config = self.state.config
        paired_id, parts = checked(
            received, lambda: relay_parts(received.filename, checked_extension(received, config), config))
        # Durable in the relay's store (fsynced file, or committed row)
        # before the 200; no room: try-later.  A phone that hangs up now
        # does not stop the store: what is stored is queued, and its
        # room accounted for, all the same.
        _, duplicate = await detached(ensureDeferred(self.relay.store.put(
            paired_id, parts, received.temp_path, received.fd, received.size, config)))
        if not duplicate:
            self.state.stats.photos_received += 1
            self.state.stats.bytes_received += received.size
        # Never a patient folder or file name in a relay's log.
        log.info("Relay: queued a photo for {fp} ({size} bytes) in {ms:.0f} ms",
                 fp=fingerprint(paired_id), size=received.size,
                 ms=(time.monotonic() - started) * 1000)
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
    C{GET /check=<name>} on a relay (PROTOCOL.md A3): does a photo of that
    name still wait to be read?
    """

    def __init__(self, state: ServerState, relay: Relay, name: bytes):
        super().__init__(state)
        self.relay = relay
        self.name = name

    def render_GET(self, request):
        return render_async(request, self._check)

    async def _check(self, request) -> Answer:
        relative = relay_check_path(self.name.decode("utf-8", "replace"), self.state.config)
        waiting = relative is not None and await self.relay.store.holds(relative)
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
    """
    C{/}: the routes both roles serve, and the role's own (L{pc_root},
    L{relay_root}), put together once at start.
    """

    def __init__(self, state: ServerState, keeper: FileOnPC | QueueOnRelay, read: Resource,
                 check: Callable[[bytes], IResource],
                 other: Callable[[bytes], IResource] = lambda path: pages.notFound()):
        super().__init__()
        self.state = state
        self.check = check
        self.other = other
        self.putChild(b"", StatusPage(state))
        self.putChild(b"load", LoadAverage(state))
        self.putChild(b"discovery", DiscoveryPage(state))
        self.putChild(b"favicon.ico", Favicon())
        api = Resource()
        api.putChild(b"photo", PhotoUpload(state, keeper))
        self.putChild(b"api", api)
        self.putChild(b"read", read)
        admin = Resource()
        admin.putChild(b"login", LoginPage(state))
        admin.putChild(b"logout", LogoutPage(state))
        add_admin_pages(admin, state)
        self.putChild(b"admin", admin)
        addon = AddonResource(state)
        addon.putChild(b"get-session", GetSession(state))  # the original's basic-authentication
        self.putChild(b"addon", addon)

    def getChildWithDefault(self, path: bytes, request):
        app_route = is_app_route(path)
        if app_route or (request.method == b"OPTIONS" and path == b""):
            add_config_headers(request, self.state.config.headers)
        if request.method == b"OPTIONS":
            return Preflight()
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request):
        if path.startswith(b"check="):
            return self.check(path[len(b"check="):])
        return self.other(path)


def pc_root(state: ServerState, filing: Filing) -> Root:
    """
    A clinic PC files uploads; nothing on it waits to be read (C{/read},
    C{/check=}); C{/pair} is its pairing page.
    """
    not_a_relay = NotARelay()
    root = Root(state, FileOnPC(state, filing), not_a_relay, lambda name: not_a_relay,
                # The original's public/ folder: add-ons' pages, scripts, styles, images.
                lambda path: PublicFiles(state, path))
    root.putChild(b"pair", PairPage(state))
    return root


def relay_root(state: ServerState, relay: Relay, pairing: PairingDesk) -> Root:
    """
    A relay queues uploads, serves them to the PCs (C{/read}, C{/check=})
    and issues and redeems pairing codes (the original's
    C{/med-genid.php}, and C{/pair}).
    """
    root = Root(state, QueueOnRelay(state, relay), ReadResource(state, relay),
                lambda name: Check(state, relay, name))
    # A code redeemed here names an id a clinic reads (its photos leave the pool).
    service = PairingService(pairing, relay.store.note_reader)
    root.putChild(b"med-genid.php", service)
    root.putChild(b"pair", service)
    return root


class MedImageSite(server.Site):
    requestFactory = MedImageRequest
    # Twisted types this as its HTTP/2-negotiating wrapper; an HTTPChannel
    # is what Site.buildProtocol needs.
    protocol = MedImageChannel  # type: ignore[assignment]

    def __init__(self, state: ServerState, root: Root, limits: Limits):
        # timeout: a connection idle this long is closed, on the state's
        # reactor's clock (as the deadlines are), not the global reactor's.
        super().__init__(root, parsePOSTFormSubmission=False, timeout=75, reactor=state.reactor)
        self.state = state
        self.limits = limits
        self.budget = RequestBudget(
            state.reactor, limits.requests_per_address, limits.request_burst_per_address,
            limits.requests_in_total, limits.request_burst_in_total)
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


def make_site(state: ServerState, root: Root, relay: bool) -> MedImageSite:
    """
    The site of a relay (C{relay}) or a clinic PC, with its role's limits
    and config.json's request budget per address.
    """
    limits = Limits.for_role(relay, uses_select(state.reactor))
    limits.requests_per_address = state.config.requestRatePerAddress
    limits.request_burst_per_address = state.config.requestBurstPerAddress
    return MedImageSite(state, root, limits)
