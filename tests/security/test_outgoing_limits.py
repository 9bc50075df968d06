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


async def install_from(http_client, server, url: str):
    token, cookie = await csrf(http_client, server)
    return await within(post_form(http_client, server, "/addon/install-addon",
                                  {"zipfileURL": url, "csrf": token}, cookie), 60)


async def install_held(browser, server, clock, first: bytes):
    """
    Ask C{server} to install from a stand-in that answers C{first} at
    once: (the stand-in's factory, its protocol, the install's answer as a
    Deferred, the PC's new timers on C{clock} since the install was asked).
    """
    held = held_answers()
    port = reactor.listenTCP(0, held, interface="127.0.0.1")
    token, cookie = await within(csrf(browser, server))
    before = set(clock.getDelayedCalls())
    installing = defer.ensureDeferred(post_form(
        browser, server, "/addon/install-addon",
        {"zipfileURL": f"http://127.0.0.1:{port.getHost().port}/a.zip", "csrf": token}, cookie))
    answer = await within(held.asked)
    answer.transport.write(first)
    return port, held, answer, installing, [call for call in clock.getDelayedCalls() if call not in before]


@pytest_twisted.ensureDeferred
async def test_an_add_on_download_that_trickles_or_never_ends_is_cut(start_server, browser, monkeypatch):
    from medimage_tx.addons import installer

    # The size limit, made small for the test (default 100 MiB); the time
    # limit (300 s) on the PC's test clock.
    monkeypatch.setattr(installer, "DOWNLOAD_MAX_BYTES", 1024 * 1024)
    seconds, clock = installer.DOWNLOAD_SECONDS, Clock()
    server = await start_server(clock=clock)
    ports = []
    try:
        # Headers at once, then a byte now and then. Before the fix only
        # the headers had a time limit: this install never answered.
        port, slow, answer, installing, timers = await install_held(
            browser, server, clock, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nx")
        ports.append(port)
        assert timers, "the download's time limit is not on the PC's clock"
        await ended(timers, "the PC reads the zip's body")
        for _ in range(10):
            clock.advance(seconds / 10)
            answer.transport.write(b"x")
        code, said = await within(installing, rule="a trickling body is cut when the download's time is up")
        assert code == 400 and f"did not arrive within {seconds:g} s" in said["message"], said
        await within(slow.cut, rule="the trickling download's connection is dropped")

        # Headers that trickle: the same time limit, headers included.
        port, slow_head, answer, installing, _ = await install_held(
            browser, server, clock, b"HTTP/1.1 200 OK\r\nX-Slow: ")
        ports.append(port)
        for _ in range(10):
            clock.advance(seconds / 10)
            answer.transport.write(b"x")
        code, said = await within(installing, rule="trickling headers are cut when the download's time is up")
        assert code == 400 and f"did not arrive within {seconds:g} s" in said["message"], said
        await within(slow_head.cut, rule="the trickling headers' connection is dropped")

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
    one; the test sends more with C{drip()}.  C{asked} fires when the GET
    arrives, with the PC's timers on C{clock} since its HEAD (those of
    the GET); C{cut} fires with the bytes sent when the PC hangs up.
    """

    isLeaf = True

    def __init__(self, photo: bool, length: int, clock):
        super().__init__()
        self.photo, self.length, self.clock = photo, length, clock
        self.sent = 0
        self.asked: defer.Deferred = defer.Deferred()
        self.cut: defer.Deferred = defer.Deferred()

    def render_HEAD(self, request):
        self.before = set(self.clock.getDelayedCalls())
        request.setHeader(b"x-medimage-relay", b"ack, wait")
        return b""

    def render_GET(self, request):
        request.setHeader(b"x-medimage-relay", b"ack, wait")
        if self.photo:
            request.setHeader(b"file-name", f"/{PAIRED_ID}/P/x.jpg".encode())
            request.setHeader(b"x-medimage-receipt", b"r")
        request.setHeader(b"content-length", b"%d" % self.length)
        self.request = request
        self.drip()

        def gone(_):
            if not self.cut.called:
                self.cut.callback(self.sent)
        request.notifyFinish().addBoth(gone)
        self.asked.callback([call for call in self.clock.getDelayedCalls() if call not in self.before])
        return server.NOT_DONE_YET

    def drip(self):
        self.request.write(b"\xff" if self.sent == 0 else b"\x00")
        self.sent += 1


def part_sizes(folder):
    return [part.stat().st_size for part in folder.glob("relay-*.part")]


@pytest_twisted.ensureDeferred
async def test_a_relay_that_trickles_a_body_is_cut_when_its_time_is_up(start_server, tmp_path):
    # The puller's times on the PC's test clock; its stall timeout (600 s
    # here) never comes first. A photo of 16 KiB declared: the stall
    # timeout plus 1 s at the slowest rate waited for (16 KiB/s). An
    # empty-queue answer: what is left of the long poll's time, its wait
    # plus the answer timeout (30 + 30 s). Before the fix a byte now and
    # then reset the stall timer, so each took 1,640 s and 100 s (at 0.5 s
    # stall, a byte every 0.1 s).
    for photo, length, seconds in ((True, 16 * 1024, 601.0), (False, 1000, 60.0)):
        clock = Clock()
        relay = TricklingRelay(photo, length, clock)
        listening = reactor.listenTCP(0, server.Site(relay), interface="127.0.0.1")
        target = tmp_path / f"clinic-{photo}"
        target.mkdir()

        def tune(service):
            puller = service.puller
            puller.backoff_start = puller.backoff_max = 3000
            puller.stall_timeout, puller.answer_timeout, puller.long_poll = 600.0, 30.0, 30

        pc = await start_server(f"pc-{photo}", clock=clock, tune=tune, globalId=PAIRED_ID,
                                backupTo=[target.as_posix()],
                                readProxy=f"http://127.0.0.1:{listening.getHost().port}/read/{PAIRED_ID}")
        puller = pc.service.puller
        try:
            get_limit = await within(relay.asked)
            assert get_limit, "the puller's time limit is not on the PC's clock"
            await ended(get_limit, "the puller reads the answer's body")
            if photo:  # a byte now and then: the stall timer never runs out
                await eventually(lambda: part_sizes(pc.data / "tmp") == [1], "the first byte is stored")
                clock.advance(300)
                relay.drip()
                await eventually(lambda: part_sizes(pc.data / "tmp") == [2], "the next byte is stored")
            clock.advance(seconds - clock.seconds() - 0.125)
            assert puller.outage is None, "gave up before its time"
            clock.advance(0.125)
            assert puller.outage is not None, "the trickle held the puller past its time"
            assert f"took longer than {seconds:g} s" in puller.outage
            sent = await within(relay.cut)
        finally:
            await defer.maybeDeferred(listening.stopListening)
            await pc.service.stopService()
        assert sent < length
        assert all_files(pc.photos) == [] and all_files(target) == [] and all_files(pc.data / "tmp") == []


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
        await within(service.cut, rule="the slow pairing service's connection is dropped")
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

    def dataReceived(self, data):
        # The client's hello: it is in its handshake.
        if not self.factory.hello.called:
            self.factory.hello.callback(None)

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
    dripping.hello, dripping.cut = defer.Deferred(), defer.Deferred()
    port = reactor.listenTCP(0, dripping, interface="127.0.0.1")
    try:
        said = defer.ensureDeferred(relay_tls.explain(
            SSL.Error("certificate verify failed"), f"https://127.0.0.1:{port.getHost().port}/read/x", None,
            clock=clock))
        await within(dripping.hello)
        clock.advance(limit - 0.125)
        assert not said.called, "gave up before its time"
        clock.advance(0.125)
        assert said.called, "the dripped handshake held the diagnosis past its time limit"
        assert "certificate is not trusted" in await said
        await within(dripping.cut, rule="the dripped handshake's connection is dropped")
    finally:
        await defer.maybeDeferred(port.stopListening)


class _SilentProxy(Protocol):
    """
    A web proxy that takes a connection and never answers its CONNECT;
    the factory's C{asked} fires when the first CONNECT arrives (the
    client has its connection), C{cut} when the client closes it.
    """

    def connectionMade(self):
        self.factory.connections += 1

    def dataReceived(self, data):
        if not self.factory.asked.called:
            self.factory.asked.callback(None)

    def connectionLost(self, reason):
        if not self.factory.cut.called:
            self.factory.cut.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_web_proxy_that_never_opens_the_tunnel_is_closed_when_time_is_up(start_server, tmp_path):
    proxy = Factory.forProtocol(_SilentProxy)
    proxy.connections, proxy.asked, proxy.cut = 0, defer.Deferred(), defer.Deferred()
    port = reactor.listenTCP(0, proxy, interface="127.0.0.1")
    clock = Clock()  # the PC's: its puller's time limits and backoff

    def tune(service):
        puller = service.puller
        puller.backoff_start = puller.backoff_max = 1.0
        puller.answer_timeout = 1.0

    try:
        pc = await start_server("pc", clock=clock, tune=tune, globalId=PAIRED_ID,
                                webProxy=f"http://127.0.0.1:{port.getHost().port}",
                                readProxy=f"https://relay.example/read/{PAIRED_ID}")
        await within(proxy.asked)
        # Before the fix the request gave up at 1 s but the connection to
        # the proxy stayed open (until the proxy answered, if ever), and
        # the CancelledError it failed with stopped the puller for good.
        clock.advance(1.0)
        await within(proxy.cut, rule="the proxy connection is closed when the request's time is up")
        await eventually(lambda: pc.service.puller.outage is not None, "the puller notes the outage")
        clock.advance(1.0)  # the backoff
        await eventually(lambda: proxy.connections >= 2, "the puller tries again after its backoff")
    finally:
        await defer.maybeDeferred(port.stopListening)
    assert pc.service.puller.outage == "the web proxy did not open the tunnel in time"
