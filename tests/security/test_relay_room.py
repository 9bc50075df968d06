"""
Issue 19 finding 1: junk uploaded under made-up pairing ids filled the
relay's C{relayTotalBytes}, and the real clinic's phone then got C{507}
for its 2 MB and 50 KB photos (for up to 7 days, until the junk expired).
Now ids no clinic PC has read from (nor redeemed a code for) here share a
small pool, C{relayUnknownBytes}; an id is known once a PC polls it, and
stays known across restarts.

A real relay process (each store: its disk, and a throwaway PostgreSQL)
behind HAProxy, a real clinic PC process pulling through HAProxy, and junk
from 80 addresses (40 IPv4, 40 IPv6 /64s) told to the relay with the
PROXY protocol, as a balancer in front of it would.
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from conftest import all_files, eventually, jpeg_bytes, multipart, within, write_config
from medimage_tx.relay_store.known_ids import IDS_PER_ADDRESS
from processes import spawn
from relay_nodes import TWISTD, Node, start_haproxy

CLINIC = "RealClinicPairing1"
TOTAL = 8_000_000
POOL = 1_000_000


class _Answer(Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


def proxy_line(source: str) -> bytes:
    """
    The PROXY protocol's first line, as HAProxy sends it for a client at
    C{source}.
    """
    if ":" in source:
        return f"PROXY TCP6 {source} ::1 40000 5566\r\n".encode()
    return f"PROXY TCP4 {source} 127.0.0.1 40000 5566\r\n".encode()


async def as_client(source: str, port: int, request: bytes) -> tuple[int, bytes]:
    """
    The status and body of C{request} sent to the relay as from C{source}.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    answer = await within(connectProtocol(endpoint, _Answer()))
    answer.transport.write(proxy_line(source) + request)
    data = await within(answer.done, 60)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def upload_request(name: str, content: bytes) -> bytes:
    body, content_type = multipart(name, content)
    return (b"POST /api/photo HTTP/1.1\r\nHost: relay\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def read_request(paired_id: str) -> bytes:
    return f"GET /read/{paired_id}?callback=poll HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n".encode()


def attackers(tag: int) -> list[str]:
    """
    40 IPv4 addresses and 40 IPv6 /64s (documentation ranges: the relay
    only hears of them, nothing is sent there).
    """
    return ([f"198.51.{tag}.{i}" for i in range(1, 41)]
            + [f"2001:db8:{tag}:{i:x}::1" for i in range(1, 41)])


async def junk_flood(port: int, tag: int) -> list[int]:
    """
    Each address uploads under its own made-up ids: a 300 KB photo, then a
    30 KB one to fill what is left.  Returns the sizes accepted.
    """
    accepted = []
    for size in (300_000, 30_000):
        sources = attackers(tag)
        answers = await defer.gatherResults([defer.ensureDeferred(as_client(
            source, port, upload_request(f"#JunkId{tag:03d}{i:03d}{size:06d}-#X-junk.jpg",
                                         jpeg_bytes(size, seed=i + size)))) for i, source in enumerate(sources)])
        assert {code for code, _ in answers} <= {200, 507}
        accepted += [size for code, _ in answers if code == 200]
    return accepted


class ClinicPC:
    """
    The clinic's PC: a real C{twistd medimage} PC process pulling from the
    relay through HAProxy.
    """

    def __init__(self, data, front: str):
        self.data = data
        write_config(data / "config.json", lanMode=False, readProxy=f"{front}/read/{CLINIC}",
                     globalId=CLINIC)
        self.process = None

    async def start(self) -> None:
        self.process = spawn([str(TWISTD), "--nodaemon", "--pidfile=", "medimage", "--data", str(self.data),
                              "--port", "0", "--interface", "127.0.0.1"], str(self.data))
        await within(self.process.port(), 60)

    async def kill9(self) -> None:
        self.process.transport.signalProcess(signal.SIGKILL)
        await self.process.exited()

    def delivered(self) -> dict[str, bytes]:
        photos = self.data / "photos"
        return {p.relative_to(photos).as_posix(): p.read_bytes() for p in all_files(photos)}


@pytest.fixture(params=["local", "postgresql"])
def store_url(request):
    return "" if request.param == "local" else request.getfixturevalue("postgres_url")


@pytest.fixture
def client():
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


async def phone_upload(client, front: str, name: str, content: bytes) -> int:
    body, content_type = multipart(name, content)
    response = await within(client.post(front + "/api/photo", data=body,
                                        headers={b"Content-Type": [content_type]}), 60)
    await response.content()
    return response.code


@pytest_twisted.ensureDeferred
async def test_junk_under_made_up_ids_cannot_take_the_room_a_clinic_needs(tmp_path, store_url, client):
    relay = await Node(tmp_path / "relay", store_url, proxy_protocol=True, relayTotalBytes=TOTAL,
                       relayUnknownBytes=POOL).start()
    front = await start_haproxy(tmp_path, [relay])

    # A clinic at work: its PC polls the relay, its phone's photo arrives.
    pc = ClinicPC(tmp_path / "pc", front)
    await pc.start()
    first = jpeg_bytes(50_000, seed=1)
    assert await phone_upload(client, front, f"#{CLINIC}-#P0-first.jpg", first) == 200
    await eventually(lambda: pc.delivered() == {"P0/first.jpg": first}, "the PC has the first photo")

    # Junk under made-up ids from 80 addresses.
    junk = await junk_flood(relay.port, 1)

    # The clinic's phone sends a 2 MB and a 50 KB photo (before the fix: 507, 507).
    photos = {"P1/big.jpg": jpeg_bytes(2_000_000, seed=2), "P1/small.jpg": jpeg_bytes(50_000, seed=3)}
    codes = [await phone_upload(client, front, f"#{CLINIC}-#P1-{name.split('/')[1]}", content)
             for name, content in photos.items()]
    assert codes == [200, 200], f"the clinic's photos were answered {codes} after {sum(junk)} bytes of junk"
    await eventually(lambda: pc.delivered() == {"P0/first.jpg": first, **photos}, "the PC has the photos")
    assert sum(junk) <= POOL, f"{len(junk)} junk photos ({sum(junk)} bytes) accepted"

    # More junk while the clinic works: still confined to the pool.
    assert await junk_flood(relay.port, 2) == []

    # Reading made-up ids makes at most IDS_PER_ADDRESS of them known per
    # address; two addresses of one IPv6 /64 count as one.
    polled = [f"PolledJunkId{i:04d}" for i in range(IDS_PER_ADDRESS + 2)]
    for i, paired_id in enumerate(polled):
        source = "2001:db8:ffff:1::1" if i % 2 else "2001:db8:ffff:1::2"
        assert (await as_client(source, relay.port, read_request(paired_id)))[0] == 200
    codes = [(await as_client("198.51.9.9", relay.port, upload_request(
        f"#{paired_id}-#X-junk.jpg", jpeg_bytes(100_000, seed=50 + i))))[0] for i, paired_id in enumerate(polled)]
    assert codes == [200] * IDS_PER_ADDRESS + [507, 507]

    # A restart (kill -9) with the PC off: the pool is still full, and the
    # clinic is still known (its photo is taken before the PC polls again).
    await pc.kill9()
    await relay.kill9()
    await relay.start()
    await eventually(lambda: _answers(client, front), "HAProxy sees the relay again")
    code, _ = await as_client("198.51.3.1", relay.port, upload_request("#JunkId0030000000-#X-j.jpg",
                                                                        jpeg_bytes(30_000, seed=3)))
    assert code == 507
    late = jpeg_bytes(2_000_000, seed=4)
    assert await phone_upload(client, front, f"#{CLINIC}-#P2-late.jpg", late) == 200
    await pc.start()
    await eventually(lambda: pc.delivered().get("P2/late.jpg") == late,
                     "the PC gets the photo sent while it was off")


async def _answers(client, front: str) -> bool:
    try:
        response = await client.get(front + "/load")
        await response.content()
    except Exception:
        return False
    return response.code == 200


@pytest_twisted.ensureDeferred
async def test_an_id_a_code_was_redeemed_for_here_is_known(start_server, http_client):
    # relayUnknownBytes 0: only known ids may upload at all.
    relay = await start_server("relay", allowPhotosLeaving=True, allowGettingRemotePhotos=False,
                               relayUnknownBytes=0)
    issued = await http_client.post(relay.url + "/med-genid.php", data={
        "guid": CLINIC, "proxyServer": "https://relay.example"})
    code = (await issued.content()).split()[0].decode()
    assert await phone_upload(http_client, relay.url, f"#{CLINIC}-#P-before.jpg", jpeg_bytes()) == 507
    redeemed = await http_client.get(f"{relay.url}/med-genid.php?compare={code}")
    assert await redeemed.content() == f"https://relay.example/write/{CLINIC}".encode()
    assert await phone_upload(http_client, relay.url, f"#{CLINIC}-#P-after.jpg", jpeg_bytes()) == 200
    assert await phone_upload(http_client, relay.url, "#NeverRedeemedId01-#P-x.jpg", jpeg_bytes()) == 507
