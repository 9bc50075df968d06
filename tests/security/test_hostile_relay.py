"""
The PC's puller against relays it cannot trust (issue 9 finding 3), an
original relay (issue 10 item 6), and files it will not file (issue 10
item 2).  Real PC servers on loopback against relay stand-ins that are
real HTTP servers.
"""

from __future__ import annotations

import os

import psutil
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.web import server
from twisted.web.resource import Resource
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from conftest import all_files, eventually, jpeg_bytes, multipart, within

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
LIMIT = 1024 * 1024


class HostileRelay(Resource):
    """
    C{GET /read/<id>}: says it is one of ours (long poll), then sends a
    "photo" as C{shape} says: C{huge} (200 MB declared and sent), C{endless}
    (chunked, for ever), C{stall} (a little, then nothing).  C{cut} fires
    with the bytes sent when the PC hangs up.
    """

    isLeaf = True

    def __init__(self, shape: str):
        super().__init__()
        self.shape = shape
        self.sent = 0
        self.cut: defer.Deferred = defer.Deferred()

    def render_HEAD(self, request):
        request.setHeader(b"x-medimage-relay", b"ack, wait")
        return b""

    def render_GET(self, request):
        request.setHeader(b"x-medimage-relay", b"ack, wait")
        request.setHeader(b"file-name", f"/{PAIRED_ID}/P/x.jpg".encode())
        request.setHeader(b"x-medimage-receipt", b"r")
        if self.shape == "huge":
            request.setHeader(b"content-length", b"%d" % (200 * 1024 * 1024))
        request.notifyFinish().addBoth(lambda _: None if self.cut.called else self.cut.callback(self.sent))
        request.registerProducer(_Sender(self, request), False)  # as fast as the PC reads
        return server.NOT_DONE_YET


@implementer(IPullProducer)
class _Sender:
    def __init__(self, relay: HostileRelay, request):
        self.relay, self.request = relay, request

    def resumeProducing(self):
        relay, request = self.relay, self.request
        if relay.cut.called:
            return
        if relay.shape == "stall" and relay.sent >= 3 * 64 * 1024:
            return  # and never another byte
        if relay.shape == "huge" and relay.sent >= 200 * 1024 * 1024:
            request.unregisterProducer()
            request.finish()
            return
        request.write(b"\xff\xd8\xff\xe0" + b"\x00" * (64 * 1024 - 4))
        relay.sent += 64 * 1024

    def stopProducing(self):
        pass


async def start_pc_against(start_server, tmp_path, relay_site, **settings):
    listening = reactor.listenTCP(0, relay_site, interface="127.0.0.1")
    target = tmp_path / "clinic"
    target.mkdir(parents=True, exist_ok=True)

    def tune(service):
        puller = service.puller
        puller.backoff_start = puller.backoff_max = 30  # one try is enough to judge
        puller.stall_timeout = 0.5

    pc = await start_server(f"pc-{tmp_path.name}", tune=tune, readProxy=f"http://127.0.0.1:{listening.getHost().port}/read/{PAIRED_ID}",
                            globalId=PAIRED_ID, backupTo=[target.as_posix()], maxUploadSize=LIMIT, **settings)
    return pc, target, listening


def rss() -> int:
    return psutil.Process().memory_info().rss  # the PC runs in this process


@pytest_twisted.ensureDeferred
async def test_hostile_relay_cannot_fill_the_pcs_disk_or_memory(start_server, tmp_path):
    for shape in ("huge", "endless", "stall"):
        relay = HostileRelay(shape)
        before = rss()
        pc, target, listening = await start_pc_against(start_server, tmp_path / shape, server.Site(relay))
        try:
            sent = await relay.cut.addTimeout(60, reactor)  # a timeout here is the failure
        finally:
            await defer.maybeDeferred(listening.stopListening)
            await pc.service.stopService()
        assert all_files(pc.photos) == [] and all_files(target) == [], shape
        assert all_files(pc.data / "tmp") == [], shape
        if shape == "huge":
            assert sent < 200 * 1024 * 1024 // 4, "a declared 200 MB body must be refused, not read"
        if shape == "endless":
            assert sent < LIMIT + 16 * 1024 * 1024  # cut at maxUploadSize (plus socket buffers)
        assert rss() - before < 64 * 1024 * 1024, shape


class OriginalRelay(Resource):
    """
    Behaves like the original MedImage relay: no B4 header; C{HEAD|GET
    /read/<id>} shows the oldest photo; a GET sends it, and for C{shred}
    seconds afterwards it stays readable under the same name with other
    bytes (the original shreds it), then it is gone.  Every request is
    noted with its time on C{clock}.
    """

    isLeaf = True

    def __init__(self, photos: list[tuple[str, bytes]], shred: float, clock):
        super().__init__()
        self.photos = list(photos)
        self.shred, self.clock = shred, clock
        self.requests: list[tuple[float, bytes, str]] = []  # (when, method, what was sent)
        self.shredding: dict[str, float] = {}  # name -> until
        self.all_taken: defer.Deferred = defer.Deferred()

    def render(self, request):
        now = self.clock.seconds()
        for name, until in list(self.shredding.items()):
            if until <= now:
                del self.shredding[name]
                self.photos = [p for p in self.photos if p[0] != name]
        if not self.photos:
            self.requests.append((now, request.method, "none"))
            if not self.all_taken.called and not self.shredding:
                self.all_taken.callback(None)
            return b"none"
        name, content = self.photos[0]
        request.setHeader(b"file-name", f"/{PAIRED_ID}/{name}".encode())
        request.setHeader(b"content-type", b"image/jpg")
        if request.method == b"HEAD":
            self.requests.append((now, b"HEAD", name))
            return b""
        if name in self.shredding:
            self.requests.append((now, b"GET", "shredded " + name))
            return os.urandom(len(content))
        self.requests.append((now, b"GET", name))
        self.shredding[name] = now + self.shred
        return content


def next_pause(clock, longest: float):
    """
    Seconds until the next call due on C{clock} within C{longest} seconds
    (the puller's pause; its time limits are far longer), or None.
    """
    due = [call.getTime() - clock.seconds() for call in clock.getDelayedCalls() if call.active()]
    return min((d for d in due if 0 <= d <= longest), default=None)


@pytest_twisted.ensureDeferred
async def test_an_original_relay_is_read_as_the_original_pc_reads_it(start_server, tmp_path):
    interval = 5.0  # the original PC's pause after a GET, on the PC's test clock
    for shred in (2.0, 8.0):  # the second outlasts the pause: the name just received is not read again
        clock = Clock()
        photos = [(f"P{i}/x{i}.jpg", jpeg_bytes(30_000, seed=i + 1)) for i in range(3)]
        relay = OriginalRelay(photos, shred, clock)
        listening = reactor.listenTCP(0, server.Site(relay), interface="127.0.0.1")
        target = tmp_path / f"clinic{shred:g}"
        target.mkdir()

        def tune(service):
            service.puller.legacy_interval = interval

        pc = await start_server(f"pc{shred:g}", clock=clock, tune=tune, globalId=PAIRED_ID,
                                backupTo=[target.as_posix()],
                                readProxy=f"http://127.0.0.1:{listening.getHost().port}/read/{PAIRED_ID}")
        try:
            # Time passes only while the puller pauses.
            while not relay.all_taken.called:
                await eventually(lambda: relay.all_taken.called or next_pause(clock, interval) is not None,
                                 f"the puller pauses or is done; the relay saw {relay.requests}")
                if not relay.all_taken.called:
                    clock.advance(next_pause(clock, interval))
        finally:
            await defer.maybeDeferred(listening.stopListening)
            await pc.service.stopService()
        gets = [what for _, method, what in relay.requests if method == b"GET"]
        assert [what for what in gets if what != "none"] == [name for name, _ in photos], relay.requests
        # Nothing, neither HEAD nor GET, sooner than the interval after a GET.
        for (when, method, _), (next_when, _, _) in zip(relay.requests, relay.requests[1:]):
            assert method != b"GET" or next_when - when >= interval, relay.requests
        assert [(target / name).read_bytes() for name, _ in photos] == [content for _, content in photos]
        assert len(all_files(target)) == 3


@pytest_twisted.ensureDeferred
async def test_a_file_the_pc_will_not_file_is_held_shown_and_then_confirmed(start_server, http_client, tmp_path):
    relay = await start_server("relay", clock=Clock(), allowPhotosLeaving=True, allowGettingRemotePhotos=False,
                               allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"},
                                             {"extension": ".pdf", "mime": "application/pdf"}])
    pdf = b"%PDF-1.4\n" + os.urandom(20_000) + b"\n%%EOF\n"
    body, content_type = multipart(f"#{PAIRED_ID}-#NHID1234-letter.pdf", pdf)
    uploaded = await http_client.post(relay.url + "/api/photo", data=body, headers={b"Content-Type": [content_type]})
    assert uploaded.code == 200, await uploaded.content()
    await uploaded.content()
    target = tmp_path / "clinic"
    target.mkdir()
    pc = await start_server("pc", globalId=PAIRED_ID, backupTo=[target.as_posix()],
                            readProxy=f"{relay.url}/read/{PAIRED_ID}",
                            allowedTypes=[{"extension": ".jpg", "mime": "image/jpeg"}])
    kept = defer.Deferred()
    pc.service.puller.held.append(kept.callback)
    await within(kept)  # called once held and confirmed
    assert relay.service.state.relay.store.queue.total_bytes() == 0
    held = [p for p in all_files(pc.data / "held") if not p.name.startswith(".")]
    assert len(held) == 1 and held[0].read_bytes() == pdf  # intact, not lost
    assert held[0].name.endswith("letter.pdf")
    assert all_files(target) == [] and all_files(relay.photos) == []
    page = await http_client.get(pc.url + "/")
    text = (await page.content()).decode()
    assert "Held files" in text, text
    assert held[0].name in text and "its type is not in allowedTypes on this PC" in text, text
