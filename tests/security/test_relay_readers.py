"""
Issue 19 finding 2: a relay node on PostgreSQL held each photo it handed
out whole in memory until the reader finished (32 slow readers from one
address added 737 MB; the local store 20 MB).  Now it reads the photo from
the database 64 KiB at a time, as the reader takes it.  A real relay
process on a throwaway PostgreSQL, real slow readers over loopback.
"""

from __future__ import annotations

import socket

import psutil
import psycopg
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from conftest import eventually, jpeg_bytes, multipart, within
from relay_nodes import start_nodes

PAIRED_ID = "SlowReaderPairing1"
READERS = 16
PHOTO_BYTES = 4_000_000
MIB = 1024 * 1024


def slow_reader(port: int) -> socket.socket:
    """
    A reader that asks for a photo (acknowledged, so it stays leased to
    it), takes the first 64 KiB and then reads nothing more, with a small
    receive window.
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /read/{PAIRED_ID} HTTP/1.1\r\nHost: relay\r\nX-MedImage-Ack: 1\r\n\r\n".encode())
    s.settimeout(60)
    received = b""
    while len(received) < 64 * 1024:
        data = s.recv(65536)
        assert data, "the relay closed the connection"
        received += data
    assert received.startswith(b"HTTP/1.1 200 ")
    return s


def leased(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM relay_photos WHERE leased_until IS NOT NULL").fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_slow_readers_of_a_postgresql_relay_hold_a_chunk_each_not_the_photo(tmp_path, postgres_url):
    (node,) = await start_nodes(tmp_path, postgres_url, count=1)
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    for i in range(READERS):
        body, content_type = multipart(f"#{PAIRED_ID}-#P{i}-photo.jpg", jpeg_bytes(PHOTO_BYTES, seed=900 + i))
        response = await within(client.post(node.url + "/api/photo", data=body,
                                            headers={b"Content-Type": [content_type]}), 60)
        assert response.code == 200, await response.content()
    relay = psutil.Process(node.process.transport.pid)
    before = relay.memory_info().rss
    readers = await within(defer.gatherResults(
        [deferToThread(slow_reader, node.port) for _ in range(READERS)]), 60)
    try:
        # Every reader has its own photo leased and has begun receiving it.
        await eventually(lambda: deferToThread(leased, postgres_url).addCallback(lambda n: n == READERS),
                         "every reader holds a lease")
        grown = relay.memory_info().rss - before
        # Before: each reader's whole photo (16 x 4 MB) stayed in memory
        # until it finished.  Now: one 64 KiB chunk and the connection's
        # buffer per reader, whatever the photo's size.
        assert grown < 16 * MIB, f"the relay grew by {grown / MIB:.0f} MiB for {READERS} slow readers"
    finally:
        for reader in readers:
            reader.close()
