"""
Slow clients and connection floods (issue 9, finding 8): the header deadline
runs from connect, connections are capped per address and in total on both
roles, and twistd raises its open-file limit at start.  Real slow clients
over loopback (one byte every 0.1 s against a 0.5 s deadline, instead of a
byte every 25 s against 30 s).
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import LoopingCall

from conftest import jpeg_bytes, multipart, within, write_config
from processes import WatchedProcess
from test_crash import TWISTD, free_port
from test_pairing_limits import http, in_thread

DEADLINE = 0.5
DRIBBLE = 0.1


class Dribbler(protocol.Protocol):
    """
    Sends C{first} at once, then C{dribble} one byte every L{DRIBBLE}
    seconds; C{closed} fires with the number of dribbled bytes sent when
    the server closed the connection.
    """

    def __init__(self, dribble: bytes, first: bytes = b""):
        self.first = first
        self.dribble = dribble
        self.sent = 0
        self.closed: defer.Deferred = defer.Deferred()
        self.answers = b""
        self._loop = LoopingCall(self._one)

    def connectionMade(self):
        if self.first:
            self.transport.write(self.first)
        if self.dribble:
            self._loop.start(DRIBBLE, now=False)

    def _one(self):
        if self.sent < len(self.dribble):
            self.transport.write(self.dribble[self.sent:self.sent + 1])
            self.sent += 1

    def dataReceived(self, data):
        self.answers += data

    def connectionLost(self, reason):
        if self._loop.running:
            self._loop.stop()
        self.closed.callback(self.sent)


async def connect(port: int, client: protocol.Protocol, source: str = "127.0.0.1"):
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    return await connectProtocol(endpoint, client)


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest_twisted.ensureDeferred
async def test_a_dribbled_request_line_is_cut_off_from_connect(start_server, role):
    """
    Before the fix the deadline started only once the request line was
    complete, and each byte reset the 75 s idle timeout, so one byte every
    25 s held a connection for as long as the client liked.
    """
    settings = {"allowPhotosLeaving": True, "allowGettingRemotePhotos": False} if role == "relay" else {}
    server = await start_server(role, **settings)
    server.service.http.factory.limits.header_seconds = DEADLINE
    port = port_of(server)
    host = f"127.0.0.1:{port}".encode()
    line = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n"  # 2 s of line at one byte per 0.1 s
    silent = Dribbler(b"")
    dribbling = Dribbler(line)
    # A request answered at once, then the next one dribbled on the kept-alive connection.
    kept_alive = Dribbler(line, first=b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    for client in (silent, dribbling, kept_alive):
        await connect(port, client)
    sent = await within(defer.gatherResults([c.closed for c in (silent, dribbling, kept_alive)]))
    # Cut within the deadline (about 5 bytes), long before the line was complete.
    assert all(n < len(line) // 2 for n in sent), sent
    assert b"HTTP/1.1 " in kept_alive.answers  # its first request was served
    # Nothing was left counted.
    assert server.service.http.factory.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_connections_are_capped_per_address_on_the_pc(start_server):
    server = await start_server("pc")
    site = server.service.http.factory
    cap = site.limits.connections_per_address
    assert cap is not None and cap >= 16  # a phone or a browser never gets near it
    port = port_of(server)
    held = [Dribbler(b"") for _ in range(cap)]
    for client in held:
        await connect(port, client, "127.0.0.7")
    assert site.connections["127.0.0.7"] == cap
    refused = Dribbler(b"")
    await connect(port, refused, "127.0.0.7")
    assert await within(refused.closed) == 0  # closed at once, before reading a byte
    # Another address is served meanwhile.
    [(status, _, _)] = await in_thread(
        http, port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode(), "127.0.0.8")
    assert status == 200
    for client in held:
        client.transport.loseConnection()
    await defer.gatherResults([c.closed for c in held])


@pytest.mark.parametrize("role", ["pc", "relay"])
@pytest_twisted.ensureDeferred
async def test_a_slow_connection_flood_from_many_addresses_passes(start_server, role):
    """
    Slow clients from many addresses fill the server up to its total cap
    (before the fix: no cap on the PC, and descriptors ran out); nothing
    beyond it is accepted, the slow ones are cut at the deadline, and a
    phone's upload then succeeds.
    """
    settings = {"allowPhotosLeaving": True, "allowGettingRemotePhotos": False} if role == "relay" else {}
    server = await start_server(role, **settings)
    site = server.service.http.factory
    site.limits.header_seconds = DEADLINE
    site.limits.connections_in_total = 40
    port = port_of(server)
    slow = [Dribbler(b"GET /" + b"a" * 100) for _ in range(50)]
    for n, client in enumerate(slow):
        await connect(port, client, f"127.0.2.{n + 1}")
    assert site.open_connections <= 40
    await within(defer.gatherResults([c.closed for c in slow]))
    assert site.open_connections == 0
    name = "#uPSE4UWHmJ8XqFUqvf-#P1-arm.jpg" if role == "relay" else "#P1-arm.jpg"
    body, content_type = multipart(name, jpeg_bytes())
    upload = (f"POST /api/photo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: ".encode() + content_type +
              b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    [(status, _, answer)] = await in_thread(http, port, upload, "127.0.0.9")
    assert (status, answer) == (200, b"Received upload successfully!")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/PID/limits")
@pytest_twisted.ensureDeferred
async def test_twistd_raises_its_open_file_limit(tmp_path):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    data = tmp_path / "pc"
    write_config(data / "config.json", lanMode=False)
    argv = [str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--no-lan", "--data", str(data),
            "--port", str(free_port()), "--interface", "127.0.0.1"]
    process = WatchedProcess()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shell = "ulimit -Sn 256 && exec " + " ".join(f"'{a}'" for a in argv)
    reactor.spawnProcess(process, "/bin/sh", ["/bin/sh", "-c", shell], env=env, path=str(tmp_path))
    try:
        await process.port()
        limits = Path(f"/proc/{process.transport.pid}/limits").read_text()
        raised = re.search(r"Max open files\s+(\d+)\s+(\d+|unlimited)", limits)
        assert int(raised.group(1)) > 256, limits
        assert raised.group(1) == raised.group(2) or raised.group(2) == "unlimited"
        line = (await process.wait_for(rb"At most (\d+) connections at once, (\d+) per client address"))
        assert int(line.group(1)) == 1000 and int(line.group(2)) == 32
    finally:
        if not process.ended.called:
            process.transport.signalProcess(signal.SIGTERM)
        await process.ended
