"""
What this server reads from the servers it calls, against servers that
send too much or too slowly: a relay sending endless response headers to
the PC's puller, an add-on download address trickling or sending without
end, a pairing service doing either.  Real servers on loopback; the
stand-ins are real TCP servers.
"""

from __future__ import annotations

import psutil
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from conftest import all_files, ended, eventually, within
from test_addons_web import browser, csrf, post_form  # noqa: F401 (browser: a fixture)
from medimage_tx.outbound.response_limits import MAX_RESPONSE_HEAD

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
#: Bytes a stand-in can write before a cut reaches it: loopback socket
#: buffers on both sides hold a few MiB at most.
BUFFERS = 16 * 1024 * 1024


@implementer(IPullProducer)
class _Flood(Protocol):
    """
    Reads a request head, then answers with C{status} and C{chunk()} for
    ever, as fast as the client reads (a pull producer: no memory grows
    here).  The factory's C{cut} fires with the bytes sent when the client
    hangs up.
    """

    def connectionMade(self):
        self.received = b""
        self.sent = 0
        self.answering = False

    def dataReceived(self, data):
        self.received += data
        if not self.answering and b"\r\n\r\n" in self.received:
            self.answering = True
            self.transport.write(self.factory.status)
            self.transport.registerProducer(self, False)

    def resumeProducing(self):
        chunk = self.factory.chunk()
        self.sent += len(chunk)
        self.transport.write(chunk)

    def stopProducing(self):
        pass

    def connectionLost(self, reason):
        self.factory.connections += 1
        if self.answering and not self.factory.cut.called:
            self.factory.cut.callback(self.sent)


def flood(status: bytes, chunk) -> Factory:
    factory = Factory.forProtocol(_Flood)
    factory.status, factory.chunk, factory.connections = status, chunk, 0
    factory.cut = defer.Deferred()
    return factory


def endless_header_lines() -> bytes:
    # Short lines, far under Twisted's 16 KiB line limit: each one is kept.
    return b"".join(b"X-Filler-%05d: abcdefgh\r\n" % i for i in range(2048))


def rss() -> int:
    return psutil.Process().memory_info().rss  # the PC runs in this process


class LogLines:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, event):
        self.lines.append(formatEvent(event))

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


@pytest_twisted.ensureDeferred
async def test_a_relay_sending_endless_headers_is_cut_at_the_head_limit(start_server, tmp_path):
    relay = flood(b"HTTP/1.1 200 OK\r\n", endless_header_lines)
    listening = reactor.listenTCP(0, relay, interface="127.0.0.1")
    target = tmp_path / "clinic"
    target.mkdir()

    def tune(service):
        puller = service.puller
        puller.backoff_start = puller.backoff_max = 300  # one try is enough to judge
        puller.answer_timeout = 600  # only the head limit can end it within the test

    before = rss()
    with LogLines() as log:
        pc = await start_server("pc", tune=tune, globalId=PAIRED_ID, backupTo=[target.as_posix()],
                                readProxy=f"http://127.0.0.1:{listening.getHost().port}/read/{PAIRED_ID}")
        try:
            # Before the fix it read on until the answer timeout: this wait failed.
            sent = await relay.cut.addTimeout(60, reactor)
            grown = rss() - before
        finally:
            await defer.maybeDeferred(listening.stopListening)
    assert sent < MAX_RESPONSE_HEAD + BUFFERS
    assert grown < 32 * 1024 * 1024, f"memory grew by {grown / 1e6:.0f} MB"
    warnings = [line for line in log.lines if "Cannot get photos from the relay" in line]
    assert len(warnings) == 1 and "headers went past 64 KiB" in warnings[0], log.lines
    assert "headers went past 64 KiB" in pc.service.puller.outage
    assert all_files(pc.photos) == [] and all_files(target) == [] and all_files(pc.data / "tmp") == []
    assert relay.connections == 1  # backing off, not retrying at once


class _Trickle(Protocol):
    """
    Reads a request head, sends C{status} at once, then one byte every
    C{every} seconds for ever; the factory's C{cut} fires with the time
    the client hung up.
    """

    def connectionMade(self):
        self.received, self.call = b"", None

    def dataReceived(self, data):
        self.received += data
        if self.call is None and b"\r\n\r\n" in self.received:
            self.transport.write(self.factory.status)
            self.call = LoopingCall(self.transport.write, b"x")
            self.call.start(self.factory.every)

    def connectionLost(self, reason):
        if self.call is not None and self.call.running:
            self.call.stop()
        if not self.factory.cut.called:
            self.factory.cut.callback(reactor.seconds())


def trickle(status: bytes, every: float = 0.1) -> Factory:
    factory = Factory.forProtocol(_Trickle)
    factory.status, factory.every, factory.cut = status, every, defer.Deferred()
    return factory


async def install_from(http_client, server, url: str):
    token, cookie = await csrf(http_client, server)
    return await within(post_form(http_client, server, "/addon/install-addon",
                                  {"zipfileURL": url, "csrf": token}, cookie), 60)


@pytest_twisted.ensureDeferred
async def test_an_add_on_download_that_trickles_or_never_ends_is_cut(start_server, browser, monkeypatch):
    from medimage_tx.addons import installer

    # The limits, made small for the test (defaults: 100 MiB, 300 s).
    monkeypatch.setattr(installer, "DOWNLOAD_SECONDS", 2.0)
    monkeypatch.setattr(installer, "DOWNLOAD_MAX_BYTES", 1024 * 1024)
    server = await start_server()
    ports = []
    try:
        # Headers at once, then a byte every 0.1 s for ever. Before the fix
        # only the headers had a time limit: this install never answered.
        slow = trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        ports.append(reactor.listenTCP(0, slow, interface="127.0.0.1"))
        began = reactor.seconds()
        code, answer = await install_from(browser, server, f"http://127.0.0.1:{ports[-1].getHost().port}/a.zip")
        assert code == 400 and "did not arrive within 2 s" in answer["message"], answer
        assert (await within(slow.cut)) - began < 20  # the connection was dropped

        # Headers that trickle: the same time limit, headers included.
        slow_head = trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        ports.append(reactor.listenTCP(0, slow_head, interface="127.0.0.1"))
        code, answer = await install_from(browser, server, f"http://127.0.0.1:{ports[-1].getHost().port}/a.zip")
        assert code == 400 and "did not arrive within 2 s" in answer["message"], answer
        await within(slow_head.cut)

        # A chunked body without end, as fast as the PC reads: cut at the size limit.
        endless = flood(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                        lambda: b"10000\r\n" + b"z" * 0x10000 + b"\r\n")
        ports.append(reactor.listenTCP(0, endless, interface="127.0.0.1"))
        code, answer = await install_from(browser, server, f"http://127.0.0.1:{ports[-1].getHost().port}/a.zip")
        assert code == 400 and "larger than 1 MiB" in answer["message"], answer
        assert (await within(endless.cut)) < 1024 * 1024 + BUFFERS

        # A declared length over the limit: refused before the body is read.
        declared = flood(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1024 ** 3), lambda: b"z" * 0x10000)
        ports.append(reactor.listenTCP(0, declared, interface="127.0.0.1"))
        code, answer = await install_from(browser, server, f"http://127.0.0.1:{ports[-1].getHost().port}/a.zip")
        assert code == 400 and "larger than 1 MiB" in answer["message"], answer
        assert (await within(declared.cut)) < BUFFERS

        # Endless headers: the head limit.
        heads = flood(b"HTTP/1.1 200 OK\r\n", endless_header_lines)
        ports.append(reactor.listenTCP(0, heads, interface="127.0.0.1"))
        code, answer = await install_from(browser, server, f"http://127.0.0.1:{ports[-1].getHost().port}/a.zip")
        assert code == 400 and "headers went past 64 KiB" in answer["message"], answer
        assert (await within(heads.cut)) < MAX_RESPONSE_HEAD + BUFFERS
    finally:
        for port in ports:
            await defer.maybeDeferred(port.stopListening)
    # Only what the server writes itself: the registry and the standard session.js.
    assert sorted(p.name for p in (server.data / "addons").iterdir()) == ["basic-authentication", "config.json"]
    assert all_files(server.data / "tmp") == []


class TricklingRelay(Resource):
    """
    Says it is one of ours (long poll); its GET answer declares C{length}
    bytes (a photo when C{photo}, else an empty-queue answer) and sends
    one byte every 0.1 s.  C{cut} fires with the bytes sent when the PC
    hangs up.
    """

    isLeaf = True

    def __init__(self, photo: bool, length: int):
        super().__init__()
        self.photo, self.length = photo, length
        self.sent = 0
        self.cut: defer.Deferred = defer.Deferred()

    def render_HEAD(self, request):
        request.setHeader(b"x-medimage-relay", b"ack, wait")
        return b""

    def render_GET(self, request):
        request.setHeader(b"x-medimage-relay", b"ack, wait")
        if self.photo:
            request.setHeader(b"file-name", f"/{PAIRED_ID}/P/x.jpg".encode())
            request.setHeader(b"x-medimage-receipt", b"r")
        request.setHeader(b"content-length", b"%d" % self.length)
        call = LoopingCall(self._one_byte, request)
        call.start(0.1)

        def gone(_):
            call.stop()
            if not self.cut.called:
                self.cut.callback(self.sent)
        request.notifyFinish().addBoth(gone)
        return server.NOT_DONE_YET

    def _one_byte(self, request):
        request.write(b"\xff" if self.sent == 0 else b"\x00")
        self.sent += 1


@pytest_twisted.ensureDeferred
async def test_a_relay_that_trickles_a_body_is_cut_when_its_time_is_up(start_server, tmp_path):
    # A photo of 16 KiB declared: the stall timeout (0.5 s here) plus 1 s
    # at the slowest rate waited for (16 KiB/s). An empty-queue answer:
    # what is left of the long poll's time, its wait plus the answer
    # timeout (1 + 1 s here). Before the fix a byte now and then reset the
    # stall timer, so each took 1,640 s and 100 s.
    for photo, length, seconds in ((True, 16 * 1024, 1.5), (False, 1000, 2.0)):
        relay = TricklingRelay(photo, length)
        listening = reactor.listenTCP(0, server.Site(relay), interface="127.0.0.1")
        target = tmp_path / f"clinic-{photo}"
        target.mkdir()

        def tune(service):
            puller = service.puller
            puller.backoff_start = puller.backoff_max = 300
            puller.stall_timeout, puller.answer_timeout, puller.long_poll = 0.5, 1.0, 1

        pc = await start_server(f"pc-{photo}", tune=tune, globalId=PAIRED_ID, backupTo=[target.as_posix()],
                                readProxy=f"http://127.0.0.1:{listening.getHost().port}/read/{PAIRED_ID}")
        try:
            began = reactor.seconds()
            sent = await relay.cut.addTimeout(30, reactor)
            took = reactor.seconds() - began
        finally:
            await defer.maybeDeferred(listening.stopListening)
            await pc.service.stopService()
        assert seconds <= took + 0.2 and sent < length, (photo, took, sent)
        assert f"took longer than {seconds:g} s" in pc.service.puller.outage
        assert all_files(pc.photos) == [] and all_files(target) == [] and all_files(pc.data / "tmp") == []


class _HeldAnswer(Protocol):
    """
    A service the test answers for: C{asked} fires with this protocol
    once a request's head has arrived, and the test writes the answer
    when it likes; C{cut} fires when the client hangs up.
    """

    def connectionMade(self):
        self.received = b""

    def dataReceived(self, data):
        self.received += data
        if b"\r\n\r\n" in self.received and not self.factory.asked.called:
            self.factory.asked.callback(self)

    def connectionLost(self, reason):
        if not self.factory.cut.called:
            self.factory.cut.callback(None)


def held_answers() -> Factory:
    factory = Factory.forProtocol(_HeldAnswer)
    factory.asked, factory.cut = defer.Deferred(), defer.Deferred()
    return factory


async def pair_with(port: int, clock=None):
    from medimage_tx.pc.pairing import PairingPlan, PairRequest, one_off_client, request_code

    wanted = PairRequest.checked("http://relay.example", custom_pairing=f"http://127.0.0.1:{port}/med-genid.php")
    return await request_code(one_off_client(reactor, ""), PairingPlan(wanted, "", ""), clock=clock)


@pytest_twisted.ensureDeferred
async def test_a_pairing_service_has_one_time_limit_for_its_whole_answer():
    from medimage_tx.pc import pairing as pc_pairing

    # The time limit (30 s) on a test clock; the service on loopback.
    limit, clock = pc_pairing.TIMEOUT_SECONDS, Clock()
    service = held_answers()
    port = reactor.listenTCP(0, service, interface="127.0.0.1")
    try:
        pairing = defer.ensureDeferred(pair_with(port.getHost().port, clock))
        answer = await within(service.asked)
        head_limit = list(clock.getDelayedCalls())
        # Headers that end just before the time is up (a line every
        # 0.25 s), then a body that drips. Before the fix the body got a
        # time of its own: 29.75 + 30 s.
        answer.transport.write(b"HTTP/1.1 200 OK\r\n")
        for line in range(int(limit / 0.25) - 1):
            clock.advance(0.25)
            answer.transport.write(b"X-Slow-%d: a\r\n" % line)
        answer.transport.write(b"Content-Length: 4000\r\n\r\n1")
        await ended(head_limit, "the pairing reads the answer's body")
        clock.advance(0.125)
        answer.transport.write(b"1")
        assert not pairing.called, "gave up before its time"
        clock.advance(0.125)
        assert clock.seconds() == limit
        assert pairing.called, "the answer's body held the pairing past its time limit"
        with pytest.raises(pc_pairing.PairingError, match="too slow"):
            await pairing
        await within(service.cut)  # the connection was dropped
    finally:
        await defer.maybeDeferred(port.stopListening)

    # Endless short header lines: cut at the head limit, in our words.
    heads = flood(b"HTTP/1.1 200 OK\r\n", endless_header_lines)
    port = reactor.listenTCP(0, heads, interface="127.0.0.1")
    try:
        with pytest.raises(pc_pairing.PairingError, match="far longer answer"):
            await within(pair_with(port.getHost().port))
        assert (await within(heads.cut)) < MAX_RESPONSE_HEAD + BUFFERS
    finally:
        await defer.maybeDeferred(port.stopListening)


class _DrippedHandshake(Protocol):
    """
    A TLS server that never finishes: a handshake record of 16 KiB
    holding a server hello of that size, then one byte of it every 0.1 s
    (real time: each byte would satisfy a limit on each read).
    """

    def connectionMade(self):
        self.transport.write(b"\x16\x03\x03\x40\x00" + b"\x02\x00\x3f\xfc")
        self.call = LoopingCall(self.transport.write, b"\x03")
        self.call.start(0.1)
        if not self.factory.connected.called:
            self.factory.connected.callback(None)

    def connectionLost(self, reason):
        if self.call.running:
            self.call.stop()
        if not self.factory.cut.called:
            self.factory.cut.callback(None)


@pytest_twisted.ensureDeferred
async def test_the_certificate_diagnosis_has_a_time_limit_in_all():
    from OpenSSL import SSL

    from medimage_tx.outbound import tls as relay_tls

    # After a refused certificate the PC connects once more to say why
    # (relay_tls.explain, in a thread the puller waits on). Its time limit
    # (5 s, on a test clock here) is for all of it: before the fix, a
    # socket timeout on each read let a byte every 0.1 s hold it (16 KiB
    # of them: 27 minutes).
    limit, clock = relay_tls.DIAGNOSIS_SECONDS, Clock()
    dripping = Factory.forProtocol(_DrippedHandshake)
    dripping.connected, dripping.cut = defer.Deferred(), defer.Deferred()
    port = reactor.listenTCP(0, dripping, interface="127.0.0.1")
    try:
        said = defer.ensureDeferred(relay_tls.explain(
            SSL.Error("certificate verify failed"), f"https://127.0.0.1:{port.getHost().port}/read/x", None,
            clock=clock))
        await within(dripping.connected)
        clock.advance(limit - 0.125)
        assert not said.called, "gave up before its time"
        clock.advance(0.125)
        assert said.called, "the dripped handshake held the diagnosis past its time limit"
        assert "certificate is not trusted" in await said
        await within(dripping.cut)  # the connection was dropped
    finally:
        await defer.maybeDeferred(port.stopListening)


class _SilentProxy(Protocol):
    """
    A web proxy that takes a connection and never answers its CONNECT;
    the factory's C{cut} fires when the client closes it.
    """

    def connectionMade(self):
        self.factory.connections += 1

    def connectionLost(self, reason):
        if not self.factory.cut.called:
            self.factory.cut.callback(reactor.seconds())


@pytest_twisted.ensureDeferred
async def test_a_web_proxy_that_never_opens_the_tunnel_is_closed_when_time_is_up(start_server, tmp_path):
    proxy = Factory.forProtocol(_SilentProxy)
    proxy.connections, proxy.cut = 0, defer.Deferred()
    port = reactor.listenTCP(0, proxy, interface="127.0.0.1")

    def tune(service):
        puller = service.puller
        puller.backoff_start = puller.backoff_max = 1.0
        puller.answer_timeout = 1.0

    try:
        pc = await start_server("pc", tune=tune, globalId=PAIRED_ID,
                                webProxy=f"http://127.0.0.1:{port.getHost().port}",
                                readProxy=f"https://relay.example/read/{PAIRED_ID}")
        began = reactor.seconds()
        # Before the fix the request gave up at 1 s but the connection to
        # the proxy stayed open (until the proxy answered, if ever), and
        # the CancelledError it failed with stopped the puller for good.
        closed = await within(proxy.cut, 20)
        assert closed - began < 10
        await eventually(lambda: proxy.connections >= 2, "the puller tries again after its backoff")
    finally:
        await defer.maybeDeferred(port.stopListening)
    assert pc.service.puller.outage == "the web proxy did not open the tunnel in time"
