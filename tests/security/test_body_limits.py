"""
Issue 9 finding 4: multipart bodies that grow without end (many parts, a
field name of gigabytes, a chunked body with no length) are refused with a
clear answer once past their bound, and the connection is closed; the
server's memory stays small.  Finding 11: deep folders and long names are
refused up front, and no traceback reaches the log.  Real servers on
loopback, attacked over raw sockets.
"""

from __future__ import annotations

import psutil
import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from conftest import all_files, jpeg_bytes, multipart

#: The attacker gives up (and the test fails) after sending this much.
GIVE_UP = 256 * 1024 * 1024
CHUNK = 256 * 1024


@implementer(IPullProducer)
class EndlessChunkedUpload(protocol.Protocol):
    """
    A POST of a chunked multipart body: C{start}, then C{repeat} for ever,
    as fast as the server reads it.  C{done} fires with (the server's
    answer, bytes sent) when the server closes the connection.
    """

    def __init__(self, start: bytes, repeat: bytes, boundary: bytes = b"b"):
        self.start, self.repeat, self.boundary = start, repeat, boundary
        self.sent = 0
        self.answer = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self):
        self.transport.write(
            b"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=" + self.boundary + b"\r\n\r\n")
        self._chunk(self.start)
        self.transport.registerProducer(self, False)

    def _chunk(self, data: bytes) -> None:
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.sent += len(data)

    def resumeProducing(self):
        if self.sent >= GIVE_UP:
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        self._chunk(self.repeat * max(1, CHUNK // len(self.repeat)))

    def stopProducing(self):
        pass

    def dataReceived(self, data):
        self.answer += data

    def connectionLost(self, reason):
        self.done.callback((self.answer, self.sent))


async def attack(server, client: EndlessChunkedUpload):
    port = int(server.url.rsplit(":", 1)[1])
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return await client.done.addTimeout(120, reactor)


def rss() -> int:
    return psutil.Process().memory_info().rss  # the servers run in this process


async def start(start_server, role: str):
    if role == "relay":
        return await start_server("relay", clock=Clock(), allowPhotosLeaving=True,
                                  allowGettingRemotePhotos=False, maxUploadSize=1024 * 1024)
    return await start_server(maxUploadSize=1024 * 1024)


PART = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
FILE_PART = (b'--b\r\nContent-Disposition: form-data; name="file1"; filename="#P-x.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xe0")

ATTACKS = {
    # name: (start of the body, what repeats, the reason in the answer, bytes the server may take)
    "many parts": (PART, PART, b"Too many parts", 64 * 1024),
    "endless field name": (b'--b\r\nContent-Disposition: form-data; name="', b"A" * 4096,
                           b"headers in the upload are too long", 64 * 1024),
    "endless header lines": (b'--b\r\nContent-Disposition: form-data; name="f"\r\n', b"X-A: b\r\n",
                             b"headers in the upload are too long", 64 * 1024),
    "endless file without a length": (FILE_PART, b"\x00" * 4096, b"Upload too large", 1024 * 1024 + 64 * 1024),
}


@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest.mark.parametrize("shape", list(ATTACKS))
@pytest_twisted.ensureDeferred
async def test_endless_chunked_bodies_are_refused_at_their_bound(start_server, role, shape):
    server = await start(start_server, role)
    start_bytes, repeat, reason, bound = ATTACKS[shape]
    before = rss()
    answer, sent = await attack(server, EndlessChunkedUpload(start_bytes, repeat))
    assert sent < GIVE_UP, "the server read on and on"
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert reason in answer and b"connection: close" in answer.lower()
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, then the connection closed
    # The server stopped reading soon after the bound: what the client got
    # through is the bound plus what the socket buffers held.
    assert sent < bound + 16 * 1024 * 1024
    assert rss() - before < 64 * 1024 * 1024
    assert all_files(server.data / "tmp") == []
    assert await _status_page(server) == 200  # and it still serves


def test_multipart_limits_without_a_server():
    """
    The same bounds in the parser alone: every limit turns into a refusal
    that says so, with nothing left on disk.
    """
    import tempfile
    from pathlib import Path

    from medimage_tx.photos.multipart import MAX_FIELD_NAME, MAX_PARTS, MultipartReceiver

    with tempfile.TemporaryDirectory() as temp:
        name = b"n" * (MAX_FIELD_NAME + 1)
        body = b'--b\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\nv\r\n--b--\r\n'
        receiver = MultipartReceiver(b"b", Path(temp), 1000, len(body))
        receiver.write(body)
        assert receiver.refuse_now and "field name" in str(receiver.error)
        parts = b"".join(b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
                         for _ in range(MAX_PARTS)) + b"--b--\r\n"
        fine = MultipartReceiver(b"b", Path(temp), 1000, len(parts))
        fine.write(parts)
        assert not fine.refuse_now and "No file" in str(pytest.raises(Exception, fine.finish).value)
        assert list(Path(temp).iterdir()) == []


async def _status_page(server) -> int:
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    response = await client.get(server.url + "/")
    await response.content()
    return response.code


# Finding 11


async def upload(client, server, name, content):
    body, content_type = multipart(name, content)
    response = await client.post(server.url + "/api/photo", data=body, headers={b"Content-Type": [content_type]})
    return response.code, await response.content()


@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest_twisted.ensureDeferred
async def test_deep_folders_and_long_names_are_refused_up_front_without_a_traceback(start_server, http_client, role):
    server = await start(start_server, role)
    prefix = "#uPSE4UWHmJ8XqFUqvf-" if role == "relay" else ""
    deep = prefix + "#a-" * 1300 + "x.jpg"  # 1,300 folders: RecursionError in mkdir before
    long = prefix + "#P-" + "n" * 2000 + ".jpg"
    with capturedLogs() as events:
        for name in (deep, long):
            code, body = await upload(http_client, server, name, jpeg_bytes())
            assert code == 400, body
            assert b"folders" in body or b"too long" in body
            assert len(body.splitlines()) == 1
    text = "\n".join(formatEvent(e) + str(e.get("log_failure", "")) for e in events)
    assert "Traceback" not in text and "RecursionError" not in text
    assert all_files(server.photos) == [] and all_files(server.data / "tmp") == []
    # A reasonable depth is fine.
    code, _ = await upload(http_client, server, prefix + "#a-#b-#c-#d-x.jpg", jpeg_bytes())
    assert code == 200


def test_unexpected_errors_are_one_line_each():
    from twisted.python.failure import Failure

    from medimage_tx.web.answers import answer_for_failure

    with capturedLogs() as events:
        for _ in range(3):
            try:
                raise RecursionError("maximum recursion depth exceeded")
            except RecursionError:
                answer = answer_for_failure(Failure())
            assert answer.code == 500
    lines = [formatEvent(e) for e in events]
    assert len(lines) == 3 and all("\n" not in line for line in lines)
    assert all(e.get("log_failure") is None for e in events)
    assert all("RecursionError" in line for line in lines)

