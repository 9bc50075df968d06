"""
Phone -> relay -> clinic PC, with two real servers on loopback
(PROTOCOL.md A1 relay role, A3, A4, B4).
"""

from __future__ import annotations

import base64
import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.ssl import Certificate
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from treq.client import HTTPClient
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import portforward
from twisted.web import http, proxy, server

import documented
from conftest import all_files, eventually, jpeg_bytes, multipart, upload_photo, within

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
APP_NAME = f"#{PAIRED_ID}-#NHID1234-arm-27-Nov-2026-10-11-12.jpg"
DELIVERED_AS = "NHID1234/arm-27-Nov-2026-10-11-12.jpg"


@pytest.fixture(params=["local", "postgresql"])
def start_server(request, start_server):
    """
    conftest's starter; relays keep their queue on this disk, or in a
    fresh PostgreSQL database: every relay test runs against both stores.
    """
    if request.param == "local":
        return start_server
    url = request.getfixturevalue("postgres_url")

    async def start(name="pc", **settings):
        if settings.get("allowPhotosLeaving"):
            settings.setdefault("relayStore", url)
        return await start_server(name, **settings)

    return start


async def holds_nothing(relay) -> bool:
    """
    The relay holds no photo for the test's id, in its store and on disk.
    """
    queued = await relay.service.state.relay.store.queued_bytes(PAIRED_ID)
    return queued == 0 and all_files(relay.photos) == []


async def upload(client, server, name: str, content: bytes):
    """
    (status, body) of the suite's one upload helper, to C{server}.
    """
    code, body, _ = await upload_photo(client, server.url, name, content)
    return code, body


async def start_relay(start_server, clock):
    return await start_server("relay", clock=clock, allowPhotosLeaving=True,
                              allowGettingRemotePhotos=False)


def fast_retries(service):
    service.puller.backoff_start = 0.01
    service.puller.backoff_max = 0.05
    service.puller.legacy_interval = 0.02


async def start_pc(start_server, tmp_path, read_url: str, tune=fast_retries, **settings):
    target = tmp_path / "clinic"
    target.mkdir(exist_ok=True)
    settings.setdefault("keepMaster", False)
    pc = await start_server("pc", tune=tune, readProxy=read_url, globalId=PAIRED_ID,
                            backupTo=[target.as_posix()], **settings)
    return pc, target


def next_delivery(pc) -> defer.Deferred:
    d = defer.Deferred()

    def once(relative):
        pc.service.puller.delivered.remove(once)
        d.callback(relative)

    pc.service.puller.delivered.append(once)
    return d


@pytest_twisted.ensureDeferred
async def test_upload_to_relay_lands_in_pc_target(start_server, http_client, tmp_path):
    relay = await start_relay(start_server, Clock())
    pc, target = await start_pc(start_server, tmp_path, f"{relay.url}/read/{PAIRED_ID}")
    delivered = next_delivery(pc)
    photo = jpeg_bytes(500_000)
    with capturedLogs() as events:
        assert await upload(http_client, relay, APP_NAME, photo) == (200, b"Received upload successfully!")
        assert await within(delivered) == DELIVERED_AS
    assert (target / DELIVERED_AS).read_bytes() == photo
    assert await holds_nothing(relay)  # confirmed, so unlinked on the relay
    assert pc.service.state.config.transfer == len(photo)
    assert '"transfer": %d' % len(photo) in (pc.data / "config.json").read_text()
    # Every line of the log but the PC's own report of what it stored: no
    # id, no patient folder, no file name (an access log would show all three).
    lines = [formatEvent(e) for e in events
             if not e.get("log_namespace", "").startswith("medimage_tx.pc.puller")]
    assert any("Relay: queued a photo" in line for line in lines)
    assert [line for line in lines if any(secret in line for secret in (PAIRED_ID, "NHID1234", "arm-27"))] == []


@pytest_twisted.ensureDeferred
async def test_photo_queued_while_pc_is_stopped_arrives_when_it_starts(start_server, http_client, tmp_path):
    relay = await start_relay(start_server, Clock())
    photos = [jpeg_bytes(seed=i) for i in (1, 2, 3)]
    for i, photo in enumerate(photos):
        code, _ = await upload(http_client, relay, f"#{PAIRED_ID}-#P{i}-x.jpg", photo)
        assert code == 200
    check = await http_client.get(relay.url + f"/check=%23{PAIRED_ID}-%23P0-x.jpg")
    assert await check.content() == b"true"
    delivered: list = []
    pc, target = await start_pc(start_server, tmp_path, f"{relay.url}/read/{PAIRED_ID}",
                                tune=lambda service: (fast_retries(service),
                                                      service.puller.delivered.append(delivered.append)))
    await eventually(lambda: len(delivered) == 3, "all three photos delivered")
    assert delivered == ["P0/x.jpg", "P1/x.jpg", "P2/x.jpg"]  # oldest first
    assert [(target / f"P{i}" / "x.jpg").read_bytes() for i in range(3)] == photos
    check = await http_client.get(relay.url + f"/check=%23{PAIRED_ID}-%23P0-x.jpg")
    assert await check.content() == b"false"


@pytest_twisted.ensureDeferred
async def test_relay_rejects_upload_without_paired_id(start_server, http_client):
    relay = await start_relay(start_server, Clock())
    for name in ("#NHID1234-arm.jpg", "arm.jpg", "#short-#NHID-x.jpg"):
        code, body = await upload(http_client, relay, name, jpeg_bytes())
        assert code == 400
        assert body.startswith(b"Error uploading file - Please reconnect your app.")
    assert await holds_nothing(relay)


@pytest_twisted.ensureDeferred
async def test_old_reader_gets_original_behaviour(start_server, http_client):
    relay = await start_relay(start_server, Clock())
    read = f"{relay.url}/read/{PAIRED_ID}"
    empty = await http_client.get(read)
    assert (empty.code, await empty.content()) == (200, b"none")
    photo = jpeg_bytes()
    await upload(http_client, relay, APP_NAME, photo)
    for _ in range(2):  # HEAD never consumes
        head = await http_client.head(read)
        assert head.headers.getRawHeaders(b"file-name") == [f"/{PAIRED_ID}/{DELIVERED_AS}".encode()]
        assert head.headers.getRawHeaders(b"content-type") == [b"image/jpeg"]
    got = await http_client.get(read + "?t=123")
    assert await got.content() == photo
    assert got.headers.getRawHeaders(b"file-name") == [f"/{PAIRED_ID}/{DELIVERED_AS}".encode()]
    assert got.headers.getRawHeaders(b"x-medimage-receipt") is None
    after = await http_client.get(read)
    assert await after.content() == b"none"
    head = await http_client.head(read)
    assert head.headers.getRawHeaders(b"file-name") is None

    async def checked_false() -> bool:
        # Until the store has confirmed the sent photo (after the answer,
        # in a thread for PostgreSQL) /check= may still see it.
        check = await http_client.get(relay.url + "/check=" + APP_NAME.replace("#", "%23"))
        return await check.content() == b"false"

    await eventually(checked_false, "/check= says the photo left the relay")
    # The file goes right after the answer, in a thread.
    await eventually(lambda: holds_nothing(relay), "the sent photo is gone from the relay")


@pytest_twisted.ensureDeferred
async def test_acknowledged_read_hides_then_requeues_then_confirms(start_server, http_client):
    clock = Clock()
    relay = await start_relay(start_server, clock)
    read = f"{relay.url}/read/{PAIRED_ID}"
    photo = jpeg_bytes()
    await upload(http_client, relay, APP_NAME, photo)
    ack = {b"X-MedImage-Ack": [b"1"]}
    first = await http_client.get(read, headers=ack)
    assert await first.content() == photo
    receipt = first.headers.getRawHeaders(b"x-medimage-receipt")[0].decode()
    expected = base64.b64encode(hashlib.sha256(photo).digest())
    assert first.headers.getRawHeaders(b"digest") == [b"sha-256=" + expected]
    assert first.headers.getRawHeaders(b"content-digest") == [b"sha-256=:" + expected + b":"]
    assert first.headers.getRawHeaders(b"x-medimage-relay") == [b"ack, wait"]
    hidden = await http_client.get(read, headers=ack)
    assert await hidden.content() == b"none"
    check = await http_client.get(relay.url + "/check=" + APP_NAME.replace("#", "%23"))
    assert await check.content() == b"true"  # leased is still on the relay
    clock.advance(documented.LEASE_SECONDS + 1)  # the lease (5 minutes) runs out
    # The store's sweep gives the photo back (a thread, for PostgreSQL).
    reads = []

    async def read_again() -> bool:
        response = await http_client.get(read, headers=ack)
        reads.append((response, await response.content()))
        return reads[-1][1] != b"none"

    await eventually(read_again, "the photo is readable again once its lease ran out")
    again, content = reads[-1]
    assert content == photo
    # The first receipt still confirms: nobody else leased it since... but
    # a second lease was made, so only the newest receipt counts.
    stale = await http_client.delete(f"{read}/{receipt}")
    assert stale.code == 404
    newest = again.headers.getRawHeaders(b"x-medimage-receipt")[0].decode()
    confirmed = await http_client.delete(f"{read}/{newest}")
    assert (confirmed.code, await confirmed.content()) == (200, b"deleted")
    assert await holds_nothing(relay)
    check = await http_client.get(relay.url + "/check=" + APP_NAME.replace("#", "%23"))
    assert await check.content() == b"false"


async def parked_poll(http_client, relay, wait: int = 60):
    """
    A PC's long poll, parked at the relay, and the list its answer lands in.
    Parked means the relay holds it (L{Relay.waiting}): a round trip on
    another connection proves neither that the poll's request was read nor
    that its look in the store (a thread, for PostgreSQL) is done.
    """
    answered = []
    waiting = http_client.get(f"{relay.url}/read/{PAIRED_ID}?wait={wait}", headers={b"X-MedImage-Ack": [b"1"]})
    waiting.addCallback(lambda response: answered.append(response) or response)
    await eventually(lambda: answered or relay.service.state.relay.waiting(PAIRED_ID) == 1,
                     "the long poll is parked")
    return waiting, answered


@pytest_twisted.ensureDeferred
async def test_long_poll_is_woken_by_the_upload(start_server, http_client):
    relay = await start_relay(start_server, Clock())  # the wait never times out by itself
    waiting, answered = await parked_poll(http_client, relay)
    assert answered == []
    photo = jpeg_bytes()
    await upload(http_client, relay, APP_NAME, photo)
    response = await within(waiting)
    assert await response.content() == photo


@pytest_twisted.ensureDeferred
async def test_photo_arriving_while_the_poll_looks_in_the_store_wakes_it(start_server, http_client):
    """
    The poll's first look at the store finds nothing, and a photo arrives
    before that answer is back (PostgreSQL looks in a thread, another node
    takes the upload): its news must not fall between the look and the wait.
    """
    relay = await start_relay(start_server, Clock())  # the wait never times out by itself
    store = relay.service.state.relay.store
    looking: defer.Deferred = defer.Deferred()

    def held_back(real):
        def look(paired_id):
            store.peek, store.lease = real_peek, real_lease  # only the first look
            found = defer.Deferred()
            gate = defer.Deferred()
            defer.ensureDeferred(real(paired_id)).addBoth(
                lambda result: gate.addCallback(lambda _: found.callback(result)))
            looking.callback([gate])  # in a list: a Deferred result would be chained
            return found
        return look

    real_peek, real_lease = store.peek, store.lease
    store.peek, store.lease = held_back(real_peek), held_back(real_lease)
    waiting = http_client.get(f"{relay.url}/read/{PAIRED_ID}?wait=60", headers={b"X-MedImage-Ack": [b"1"]})
    told = []
    wake = store.on_available
    store.on_available = lambda paired_id: (told.append(paired_id), wake(paired_id))
    [gate] = await within(looking)
    photo = jpeg_bytes()
    await upload(http_client, relay, APP_NAME, photo)
    await eventually(lambda: PAIRED_ID in told, "the store tells of the new photo")
    gate.callback(None)  # the look's answer (nothing) comes back only now
    response = await within(waiting)
    assert await response.content() == photo


@pytest_twisted.ensureDeferred
async def test_a_wake_for_nothing_does_not_cut_the_long_poll_short(start_server, http_client):
    """
    A store that reconnects to its database wakes every poll (it may have
    missed news); a poll with nothing to send waits on instead of answering
    C{none} early.  A cluster node's first connection does this too.
    """
    clock = Clock()
    relay = await start_relay(start_server, clock)
    waiting, answered = await parked_poll(http_client, relay)
    store = relay.service.state.relay.store
    store.on_available(None)
    # Woken, it waits again (at once, or once its look in the store is back).
    await eventually(lambda: relay.service.state.relay.waiting(PAIRED_ID) == 1, "the poll waits again")
    clock.advance(30)
    empty = await http_client.get(f"{relay.url}/read/{PAIRED_ID}")
    await empty.content()
    assert answered == []
    photo = jpeg_bytes()
    await upload(http_client, relay, APP_NAME, photo)
    response = await within(waiting)
    assert await response.content() == photo
    # With nothing to send, the poll still answers once its time is up.
    waiting, answered = await parked_poll(http_client, relay)
    store.on_available(None)
    # The woken poll looks in the store (a thread, for PostgreSQL) before it
    # waits again: move the clock on until its time is up.
    await eventually(lambda: clock.advance(60) or answered, "the poll answers when its time is up")
    assert await answered[0].content() == b"none"


@pytest_twisted.ensureDeferred
async def test_jsonp_and_bad_reads(start_server, http_client):
    relay = await start_relay(start_server, Clock())
    read = f"{relay.url}/read/{PAIRED_ID}"
    response = await http_client.get(read + "?callback=medImage.got_1")
    assert await response.content() == b'medImage.got_1("none")'
    for bad in ("?callback=alert(1)", "?callback=a%3Bb", "?callback=a%20b", "?wait=600", "?wait=abc"):
        response = await http_client.get(read + bad)
        assert response.code == 400, bad
    for bad_id in ("abc%2F..", "..", "abc-def"):
        response = await http_client.get(f"{relay.url}/read/{bad_id}")
        assert response.code in (400, 404), bad_id


class CutAfterFirstBytes(portforward.ProxyClient):
    """
    Relay -> PC direction of a TCP forwarder: the first connection is cut
    once part of a photo has passed.
    """

    def dataReceived(self, data):
        super().dataReceived(data)
        self.seen = getattr(self, "seen", 0) + len(data)
        cuts_left = self.peer.factory.cuts_left  # per forwarder, so per test
        if self.seen > 100_000 and cuts_left[0]:
            cuts_left[0] -= 1
            self.transport.abortConnection()
            self.peer.transport.abortConnection()


class CuttingClientFactory(portforward.ProxyClientFactory):
    protocol = CutAfterFirstBytes


class CuttingServer(portforward.ProxyServer):
    clientProtocolFactory = CuttingClientFactory


@pytest_twisted.ensureDeferred
async def test_connection_cut_mid_body_loses_nothing(start_server, http_client, tmp_path):
    clock = Clock()
    relay = await start_relay(start_server, clock)
    relay_port = int(relay.url.rsplit(":", 1)[1])
    factory = portforward.ProxyFactory("127.0.0.1", relay_port)
    factory.protocol = CuttingServer
    factory.cuts_left = [1]
    forwarder = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        photo = jpeg_bytes(2_000_000)
        await upload(http_client, relay, APP_NAME, photo)
        pc, target = await start_pc(
            start_server, tmp_path, f"http://127.0.0.1:{forwarder.getHost().port}/read/{PAIRED_ID}")
        delivered = next_delivery(pc)
        # The cut photo is leased, so hidden; it comes back when the lease
        # runs out, and the PC's long poll is woken by that.
        assert await leases_run_out_until(clock, delivered) == DELIVERED_AS
    finally:
        await defer.maybeDeferred(forwarder.stopListening)
    assert factory.cuts_left == [0]
    assert [p.relative_to(target).as_posix() for p in all_files(target)] == [DELIVERED_AS]
    assert (target / DELIVERED_AS).read_bytes() == photo
    assert all_files(pc.data / "tmp") == []


async def leases_run_out_until(clock, delivered: defer.Deferred):
    """
    Run the relay's (fake) clock on a lease at a time until C{delivered}
    fires, for at most the suite's wait; its result.
    """
    await eventually(lambda: delivered.called or clock.advance(documented.LEASE_SECONDS + 1),
                     "the photo was delivered after its lease ran out")
    return await delivered


@pytest_twisted.ensureDeferred
async def test_failed_local_write_is_not_acknowledged(start_server, http_client, tmp_path):
    clock = Clock()
    relay = await start_relay(start_server, clock)
    photo = jpeg_bytes()
    await upload(http_client, relay, APP_NAME, photo)
    # The PC cannot store into photos/NHID1234: a file stands where that folder must go.
    blocker = tmp_path / "pc" / "photos" / "NHID1234"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    with capturedLogs() as events:
        pc, target = await start_pc(start_server, tmp_path, f"{relay.url}/read/{PAIRED_ID}",
                                    keepMaster=True)
        await eventually(lambda: any("Cannot get photos from the relay" in formatEvent(e) for e in events),
                         "the PC reported that it cannot store")
    assert await relay.service.state.relay.store.holds(f"{PAIRED_ID}/{DELIVERED_AS}")  # not acknowledged
    blocker.unlink()
    assert await leases_run_out_until(clock, next_delivery(pc)) == DELIVERED_AS
    assert [p.relative_to(target).as_posix() for p in all_files(target)] == [DELIVERED_AS]
    assert (target / DELIVERED_AS).read_bytes() == photo
    assert await holds_nothing(relay)


class WithoutB4(proxy.ProxyClient):
    """
    Makes our relay look like an original MedImage relay: no B4 header.
    """

    def handleHeader(self, key, value):
        if key.lower() != b"x-medimage-relay":
            super().handleHeader(key, value)


class WithoutB4Factory(proxy.ProxyClientFactory):
    protocol = WithoutB4


class LegacyRelayFront(proxy.ReverseProxyResource):
    proxyClientFactoryClass = WithoutB4Factory

    def getChild(self, path, request):
        return LegacyRelayFront(self.host, self.port, self.path + b"/" + path, self.reactor)


@pytest_twisted.ensureDeferred
async def test_pc_polls_a_legacy_relay(start_server, http_client, tmp_path):
    relay = await start_relay(start_server, Clock())
    relay_port = int(relay.url.rsplit(":", 1)[1])
    front = LegacyRelayFront("127.0.0.1", relay_port, b"")
    listening = reactor.listenTCP(0, server.Site(front), interface="127.0.0.1")
    try:
        photos = [jpeg_bytes(seed=i) for i in (4, 5)]
        for i, photo in enumerate(photos):
            await upload(http_client, relay, f"#{PAIRED_ID}-#L{i}-y.jpg", photo)
        pc, target = await start_pc(
            start_server, tmp_path, f"http://127.0.0.1:{listening.getHost().port}/read/{PAIRED_ID}")
        await within(next_delivery(pc))
        if len(all_files(target)) < 2:
            await within(next_delivery(pc))
        assert pc.service.puller._supports_ack is False
    finally:
        await defer.maybeDeferred(listening.stopListening)
    assert [(target / f"L{i}" / "y.jpg").read_bytes() for i in range(2)] == photos


async def deliver_through_proxy(start_server, tmp_path, read_url: str, proxy_port):
    """
    Start a PC whose webProxy is the test's proxy (user clinic, password
    "s3cret pw") and wait for its first photo; returns its target folder.
    """
    pc, target = await start_pc(
        start_server, tmp_path, read_url,
        webProxy=f"http://clinic:s3cret%20pw@127.0.0.1:{proxy_port.getHost().port}")
    assert await within(next_delivery(pc)) == DELIVERED_AS
    return target


class CheckingProxyRequest(proxy.ProxyRequest):
    def process(self):
        credentials = self.requestHeaders.getRawHeaders(b"proxy-authorization", [b""])[0]
        self.channel.factory.seen.append((self.method, credentials))  # per proxy, so per test
        if credentials != b"Basic " + base64.b64encode(b"clinic:s3cret pw"):
            self.setResponseCode(407)
            self.setHeader(b"proxy-authenticate", b'Basic realm="clinic"')
            self.finish()
            return
        super().process()


class CheckingProxy(proxy.Proxy):
    requestFactory = CheckingProxyRequest


@pytest_twisted.ensureDeferred
async def test_pc_reaches_relay_through_authenticating_web_proxy(start_server, http_client, tmp_path):
    relay = await start_relay(start_server, Clock())
    factory = http.HTTPFactory()
    factory.protocol = CheckingProxy
    factory.seen = []
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        photo = jpeg_bytes()
        await upload(http_client, relay, APP_NAME, photo)
        target = await deliver_through_proxy(start_server, tmp_path, f"{relay.url}/read/{PAIRED_ID}", listening)
    finally:
        await defer.maybeDeferred(listening.stopListening)
    assert (target / DELIVERED_AS).read_bytes() == photo
    expected = b"Basic " + base64.b64encode(b"clinic:s3cret pw")
    assert factory.seen and all(c == expected for _, c in factory.seen)
    assert b"DELETE" in [m for m, _ in factory.seen]  # the confirmation went through it too


class ConnectProxy(protocol.Protocol):
    """
    A clinic's proxy that only allows CONNECT with the right credentials,
    then splices bytes both ways.  Its factory's C{seen} lists what it was asked.
    """

    def connectionMade(self):
        self.buffer = b""
        self.upstream = None

    def dataReceived(self, data):
        if self.upstream is not None:
            self.upstream.transport.write(data)
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        method, target = lines[0].split(b" ")[:2]
        auth = next((l.split(b":", 1)[1].strip() for l in lines[1:]
                     if l.lower().startswith(b"proxy-authorization:")), b"")
        self.factory.seen.append((method, auth))
        if method != b"CONNECT" or auth != b"Basic " + base64.b64encode(b"clinic:s3cret pw"):
            self.transport.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            self.transport.loseConnection()
            return
        host, port = target.rsplit(b":", 1)
        self.transport.pauseProducing()
        upstream = Upstream(self)
        d = connectProtocol(TCP4ClientEndpoint(reactor, host.decode(), int(port)), upstream)

        def connected(_):
            self.upstream = upstream
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.transport.write(rest)
            self.transport.resumeProducing()

        d.addCallback(connected)

    def connectionLost(self, reason):
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class Upstream(protocol.Protocol):
    def __init__(self, client):
        self.client = client

    def dataReceived(self, data):
        self.client.transport.write(data)

    def connectionLost(self, reason):
        self.client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_pc_reaches_https_relay_through_connect_tunnel(start_server, http_client, tmp_path, monkeypatch):
    from security.test_tls import make_certificate

    key_path, cert_path = make_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # the PC trusts the test's certificate
    relay = await start_relay_with(start_server, httpsKey=str(key_path), httpsCert=str(cert_path))
    relay_url = relay.url.replace("http://", "https://")
    proxy_factory = protocol.Factory.forProtocol(ConnectProxy)
    proxy_factory.seen = []
    listening = reactor.listenTCP(0, proxy_factory, interface="127.0.0.1")
    try:
        photo = jpeg_bytes()
        trust = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert_path.read_bytes()))
        phone = HTTPClient(Agent(reactor, contextFactory=trust, pool=HTTPConnectionPool(reactor, persistent=False)))
        body, content_type = multipart(APP_NAME, photo)
        uploaded = await phone.post(relay_url + "/api/photo", data=body, headers={b"Content-Type": [content_type]})
        assert uploaded.code == 200
        await uploaded.content()
        target = await deliver_through_proxy(start_server, tmp_path, f"{relay_url}/read/{PAIRED_ID}", listening)
    finally:
        await defer.maybeDeferred(listening.stopListening)
    assert (target / DELIVERED_AS).read_bytes() == photo
    assert proxy_factory.seen and all(m == b"CONNECT" for m, _ in proxy_factory.seen)


async def start_relay_with(start_server, **settings):
    return await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                              allowGettingRemotePhotos=False, **settings)


def test_backoff_is_capped_even_after_days_of_failures():
    from medimage_tx.pc.puller import backoff_delay

    assert [backoff_delay(n, 1.0, 60.0) for n in (1, 2, 3, 7, 8)] == [1.0, 2.0, 4.0, 60.0, 60.0]
    assert backoff_delay(100_000, 1.0, 60.0) == 60.0
