"""
Several relay nodes on one PostgreSQL (docs/relay-cluster.md): real
C{twistd medimage} relay processes sharing a throwaway database, HAProxy
in front where the PC needs one address, and faults: a node killed with
C{kill -9} while it holds the PC's long poll and lease or while phones
upload to it, and PostgreSQL stopped and started under load.
"""

from __future__ import annotations

import random

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from conftest import all_files, eventually, jpeg_bytes, multipart, within
from medimage_tx.relay_store.pairing_codes import FAILURES_PER_ADDRESS
from processes import spawn
from relay_nodes import Node, start_haproxy, start_nodes

PAIRED_ID = "ClusterPairing0001"


@pytest.fixture
def client():
    pool = HTTPConnectionPool(reactor, persistent=False)
    yield HTTPClient(Agent(reactor, pool=pool))


async def upload(client, url: str, name: str, content: bytes):
    body, content_type = multipart(name, content)
    response = await within(client.post(url + "/api/photo", data=body,
                                         headers={b"Content-Type": [content_type]}), 60)
    return response.code, await within(response.content(), 60), response


def name_of(i: int) -> str:
    return f"#{PAIRED_ID}-#P{i}-photo.jpg"


def rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM relay_photos").fetchone()[0]


def expire_leases(url: str) -> None:
    """
    What five minutes do to leases, without waiting five minutes: every
    lease runs out now; a node's sweep notices and wakes the long polls.
    """
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE relay_photos SET leased_until = 0 WHERE leased_until IS NOT NULL")


@pytest_twisted.ensureDeferred
async def test_upload_on_node_a_is_delivered_by_a_long_poll_on_node_b(tmp_path, postgres_url, client):
    a, b = await start_nodes(tmp_path, postgres_url)
    ack = {b"X-MedImage-Ack": [b"1"]}
    polling = client.get(f"{b.url}/read/{PAIRED_ID}?wait=30", headers=ack)
    answered = []
    polling.addCallback(lambda response: answered.append(response) or response)
    # A round trip to B: B has most likely read the poll by now and parked
    # it (it listens before it looks, 3d0847b); whether it has or not, the
    # photo must reach that poll.
    empty = await within(client.get(f"{b.url}/read/{PAIRED_ID}"))
    assert await empty.content() == b"none" and answered == []
    photo = jpeg_bytes(3_000_000)
    assert (await upload(client, a.url, name_of(1), photo))[:2] == (200, b"Received upload successfully!")
    response = await within(polling)
    assert await response.content() == photo
    assert response.headers.getRawHeaders(b"file-name") == [f"/{PAIRED_ID}/P1/photo.jpg".encode()]
    receipt = response.headers.getRawHeaders(b"x-medimage-receipt")[0]
    for node in (a, b):  # /check= answers the same everywhere
        check = await within(client.get(f"{node.url}/check=%23{PAIRED_ID}-%23P1-photo.jpg"))
        assert await check.content() == b"true"
    # The lease taken on B holds on A; the receipt confirms on A.
    hidden = await within(client.get(f"{a.url}/read/{PAIRED_ID}", headers=ack))
    assert await hidden.content() == b"none"
    confirmed = await within(client.delete(f"{a.url}/read/{PAIRED_ID}/{receipt.decode()}"))
    assert (confirmed.code, await confirmed.content()) == (200, b"deleted")
    for node in (a, b):
        check = await within(client.get(f"{node.url}/check=%23{PAIRED_ID}-%23P1-photo.jpg"))
        assert await check.content() == b"false"
    assert rows(postgres_url) == 0


@pytest_twisted.ensureDeferred
async def test_code_issued_on_a_redeems_on_b_and_guess_limit_counts_both(tmp_path, postgres_url, client):
    a, b = await start_nodes(tmp_path, postgres_url)
    issued = await within(client.post(f"{a.url}/med-genid.php",
                                      data={"proxyServer": "https://relay.example", "country": "NZ"}))
    code, paired_id = (await issued.content()).decode().split()[:2]
    redeemed = await within(client.get(f"{b.url}/med-genid.php?compare={code.lower()}"))
    assert await redeemed.content() == f"https://relay.example/write/{paired_id}".encode()
    for i in range(FAILURES_PER_ADDRESS):
        node = (a, b)[i % 2]
        wrong = await within(client.get(f"{node.url}/med-genid.php?compare=ZZZZ"))
        assert await wrong.content() == b"nomatch"
    # Ten failures over A and B together: the right code no longer works
    # from this address, on either node.
    for node in (a, b):
        blocked = await within(client.get(f"{node.url}/med-genid.php?compare={code}"))
        assert await blocked.content() == b"nomatch"


class RawResponse(Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


async def raw_get(source: str, port: int, path: str) -> bytes:
    """
    The whole answer to C{GET path} sent from the loopback address
    C{source}, as a phone elsewhere on the internet would send it.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    response = await within(connectProtocol(endpoint, RawResponse()))
    response.transport.write(f"GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n".encode())
    return await within(response.done)


async def get_from(source: str, port: int, path: str) -> bytes:
    return (await raw_get(source, port, path)).split(b"\r\n\r\n", 1)[1]


@pytest_twisted.ensureDeferred
async def test_behind_haproxy_limits_count_each_clients_own_address(haproxy, tmp_path, postgres_url, client):
    nodes = await start_nodes(tmp_path, postgres_url, proxy_protocol=True)
    front = await start_haproxy(tmp_path, nodes)
    port = int(front.rsplit(":", 1)[1])
    issued = await within(client.post(f"{front}/med-genid.php", data={"proxyServer": "https://relay.example"}))
    code = (await issued.content()).split()[0].decode()
    for _ in range(FAILURES_PER_ADDRESS):
        assert await get_from("127.0.0.2", port, "/med-genid.php?compare=ZZZZ") == b"nomatch"
    # The guesser's address has its fill on both nodes; another client's has not.
    assert await get_from("127.0.0.2", port, f"/med-genid.php?compare={code}") == b"nomatch"
    assert (await get_from("127.0.0.3", port, f"/med-genid.php?compare={code}")).startswith(b"https://relay.example/write/")
    # Without the balancer's header a node takes nothing.
    assert await raw_get("127.0.0.1", nodes[0].port, "/load") == b""


class PC:
    """
    A real clinic PC server (in this process) pulling through HAProxy.
    """

    def __init__(self, server):
        self.server = server
        self.puller = server.service.puller
        self.target = server.data / "clinic"

    def delivered(self) -> dict[str, bytes]:
        photos = self.server.photos
        return {p.relative_to(photos).as_posix(): p.read_bytes() for p in all_files(photos)}


async def start_pc(start_server, front: str) -> PC:
    def fast_retries(service):
        service.puller.backoff_start = 0.05
        service.puller.backoff_max = 0.5

    server = await start_server("pc", tune=fast_retries, readProxy=f"{front}/read/{PAIRED_ID}",
                                globalId=PAIRED_ID)
    return PC(server)


def leased_on(node: Node) -> int:
    return node.process.output.count(b"Relay: sent a photo")


@pytest_twisted.ensureDeferred
async def test_node_killed_while_holding_the_pcs_long_poll_and_lease_loses_nothing(
        haproxy, tmp_path, postgres_url, client, start_server):
    a, b = await start_nodes(tmp_path, postgres_url)
    # "first": every request goes to A while A is up, so A holds the PC's
    # long poll and, below, its lease.  Phones upload to B directly.
    front = await start_haproxy(tmp_path, [a, b], balance="first", send_proxy=False)
    photos = {i: jpeg_bytes(1_000_000, seed=i + 1) for i in range(4)}
    # The PC cannot store yet (a file stands where its folder must go), so
    # the lease it takes on A is never confirmed.
    blocker = tmp_path / "pc" / "photos" / "P0"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    pc = await start_pc(start_server, front)
    await eventually(lambda: pc.puller._supports_ack, "the PC long-polls through HAProxy")
    assert (await upload(client, b.url, name_of(0), photos[0]))[0] == 200
    await eventually(lambda: leased_on(a) >= 1, "A hands the photo to the PC")
    # A's line says only that the photo went into its connection: the PC
    # may still be reading it, and would store it once the folder is free.
    await eventually(lambda: pc.puller.outage is not None, "the PC fails to store P0")
    await a.kill9()
    blocker.unlink()
    for i in (1, 2, 3):  # more photos while A is dead, through the front
        assert (await upload(client, front, name_of(i), photos[i]))[0] == 200
    await eventually(lambda: len(pc.delivered()) == 3, "the PC gets the photos that were never leased")
    # P0 stays leased to the PC's connection on dead A, until the lease runs out.
    await eventually(lambda: rows(postgres_url) == 1, "the three confirmed, P0 leased")
    assert "P0/photo.jpg" not in pc.delivered()
    await deferToThread(expire_leases, postgres_url)
    await eventually(lambda: len(pc.delivered()) == 4, "the lease runs out and B gives P0 again")
    assert pc.delivered() == {f"P{i}/photo.jpg": photos[i] for i in range(4)}  # each once, intact
    await eventually(lambda: rows(postgres_url) == 0, "every delivery confirmed")


@pytest_twisted.ensureDeferred
async def test_node_killed_mid_upload_loses_no_acknowledged_photo(haproxy, tmp_path, postgres_url, client,
                                                                  start_server):
    rng = random.Random(20261128)
    a, b = await start_nodes(tmp_path, postgres_url)
    front = await start_haproxy(tmp_path, [a, b], send_proxy=False)  # phones upload to A directly
    photos = {i: jpeg_bytes(2_000_000, seed=100 + i) for i in range(12)}
    acknowledged: set[int] = set()
    for round_ in range(3):
        # Phones upload to A; A is killed at a random moment among them.
        batch = [i for i in photos if i not in acknowledged][:4]
        uploads = [defer.ensureDeferred(_try_upload(client, a.url, name_of(i), photos[i])) for i in batch]
        await deferLater(reactor, rng.uniform(0.0, 0.3))
        await a.kill9()
        results = await defer.gatherResults(uploads)
        acknowledged |= {i for i, ok in zip(batch, results) if ok}
        await a.start()
    # The phones retry what got no 200, through the front.
    for i in photos:
        if i not in acknowledged:
            assert (await upload(client, front, name_of(i), photos[i]))[0] == 200
            acknowledged.add(i)
    pc = await start_pc(start_server, front)
    await eventually(lambda: len(pc.delivered()) == len(photos), "the PC gets every photo", 60)
    assert pc.delivered() == {f"P{i}/photo.jpg": photos[i] for i in photos}
    await eventually(lambda: rows(postgres_url) == 0, "every delivery confirmed")


async def _try_upload(client, url: str, name: str, content: bytes) -> bool:
    try:
        code, body, _ = await upload(client, url, name, content)
    except Exception:
        return False  # killed mid-request: the phone keeps the photo and retries
    return code == 200 and body == b"Received upload successfully!"


@pytest_twisted.ensureDeferred
async def test_postgresql_stopped_and_started_under_load_loses_nothing(
        haproxy, tmp_path, postgres, client, start_server):
    url = postgres.new_database()
    a, b = await start_nodes(tmp_path, url, proxy_protocol=True)
    front = await start_haproxy(tmp_path, [a, b])
    pc = await start_pc(start_server, front)
    photos = {i: jpeg_bytes(300_000, seed=500 + i) for i in range(30)}
    try_later = []

    async def phone(indexes: list[int]) -> None:
        for i in indexes:
            while True:  # the app retries until it gets its 200
                try:
                    code, _, response = await upload(client, front, name_of(i), photos[i])
                except Exception:
                    code, response = None, None
                if code == 200:
                    break
                if response is not None and response.headers.hasHeader(b"retry-after"):
                    try_later.append(code)
                await deferLater(reactor, 0.1)

    phones = [defer.ensureDeferred(phone(list(range(k, 30, 3)))) for k in range(3)]
    await eventually(lambda: len(pc.delivered()) >= 3, "photos flow before the outage")
    await deferToThread(postgres.stop)
    await eventually(lambda: try_later, "nodes answer try-later while the database is down")
    await deferToThread(postgres.start)
    await within(defer.gatherResults(phones), 120)
    await eventually(lambda: len(pc.delivered()) == len(photos), "every photo arrives after the outage", 120)
    assert set(try_later) <= {500, 429}
    # A confirmation the outage refused leaves its photo leased; when the
    # lease runs out the PC gets it again and keeps one copy.
    await deferToThread(expire_leases, url)
    await eventually(lambda: rows(url) == 0, "every delivery confirmed", 60)
    assert pc.delivered() == {f"P{i}/photo.jpg": photos[i] for i in photos}
    for node in (a, b):
        assert not node.process.ended.called  # they recovered by themselves


def deferToThread(f, *args):
    from twisted.internet.threads import deferToThread as in_thread

    return in_thread(f, *args)


def waiting_on_a_row_lock(url: str) -> bool:
    """
    Whether some connection to the database waits for a row lock (another
    transaction holds the row it wants).
    """
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted)").fetchone()[0]


@pytest_twisted.ensureDeferred
async def test_a_second_reader_takes_the_next_photo_at_once_while_another_holds_a_lease(
        tmp_path, postgres_url, client):
    # SKIP LOCKED: a node in the middle of leasing the oldest photo (its
    # transaction holds the row) does not hold up a reader on another node,
    # which takes the next photo.  Without it the second reader queues
    # behind the row lock (it never gets the same photo either way).
    (node,) = await start_nodes(tmp_path, postgres_url, count=1)
    photos = {i: jpeg_bytes(50_000, seed=700 + i) for i in range(2)}
    for i in range(2):
        assert (await upload(client, node.url, name_of(i), photos[i]))[0] == 200
    holder = await deferToThread(psycopg.connect, postgres_url)
    try:
        # What the first node's lease holds until it commits.
        await deferToThread(lambda: holder.execute(
            "SELECT id FROM relay_photos ORDER BY id LIMIT 1 FOR UPDATE").fetchone())
        reading = defer.ensureDeferred(_read_with_ack(client, node.url))
        stuck = defer.ensureDeferred(eventually(
            lambda: reading.called or deferToThread(waiting_on_a_row_lock, postgres_url),
            "the second read answers, or waits on the held row"))
        await stuck
        assert reading.called, "the second reader waits for the row the first lease holds"
        code, body, name = await reading
        assert (code, body, name) == (200, photos[1], f"/{PAIRED_ID}/P1/photo.jpg")
    finally:
        await deferToThread(holder.close)


async def _read_with_ack(client, url: str):
    response = await within(client.get(f"{url}/read/{PAIRED_ID}", headers={b"X-MedImage-Ack": [b"1"]}))
    body = await within(response.content())
    return response.code, body, response.headers.getRawHeaders(b"file-name", [b""])[0].decode()
