"""
What this server reads from the servers it calls, against servers that
send too much or too slowly: a relay sending endless response headers to
the PC's puller, an add-on download address trickling or sending without
end, a pairing service doing either.  Real servers on loopback; the
stand-ins are real TCP servers.
"""

from __future__ import annotations

import psutil
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from conftest import all_files
from medimage_tx.response_limits import MAX_RESPONSE_HEAD

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

