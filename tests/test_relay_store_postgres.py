"""
The PostgreSQL relay store against a real, throwaway PostgreSQL: the schema
at start, two stores on one database acting as two relay nodes, and the
one-line error for a database that cannot be reached.
"""

from __future__ import annotations

import hashlib

import psycopg
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

import documented
from conftest import jpeg_bytes, within
from medimage_tx.errors import TryLater
from medimage_tx.relay_store import schema
from medimage_tx.relay_store.base import RelayStoreUnavailable
from medimage_tx.relay_store.postgres import PostgresPairingDesk, PostgresRelayStore, check_database, redacted
from postgres_server import free_port

PAIRED_ID = "uPSE4UWHmJ8XqFUqvf"
PARTS = (PAIRED_ID, "NHID1234", "arm.jpg")


async def whole(delivery) -> bytes:
    """
    A leased photo's bytes, read as the relay sends them: a piece at a time.
    """
    pieces, offset = [], 0
    while offset < delivery.photo.size:
        piece = await delivery.read_chunk(offset, 64 * 1024)
        assert piece, "the photo went away while it was read"
        pieces.append(piece)
        offset += len(piece)
    return b"".join(pieces)


def limits(quota: int = 10**9, total: int = 10**12):
    """
    The config keys a store's put reads.
    """
    return SimpleNamespace(relayQuotaBytes=quota, relayTotalBytes=total, relayUnknownBytes=total)


def test_schema_is_created_then_left_alone(postgres_url):
    assert check_database(postgres_url) == (0, schema.VERSION)
    assert check_database(postgres_url) == (schema.VERSION, schema.VERSION)
    with psycopg.connect(postgres_url) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"relay_photos", "pairing_codes", "pairing_failures", "medimage_schema"} <= tables


def test_schema_from_a_newer_version_is_refused(postgres_url):
    check_database(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE medimage_schema SET version = %s", (schema.VERSION + 1,))
    with pytest.raises(RelayStoreUnavailable) as error:
        check_database(postgres_url)
    assert "newer than this medimage_tx knows" in str(error.value)
    assert "\n" not in str(error.value)


def test_unreachable_database_is_one_line_without_the_password():
    url = f"postgresql://relay:secret-pw@127.0.0.1:{free_port()}/medimage"
    with pytest.raises(RelayStoreUnavailable) as error:
        check_database(url)
    message = str(error.value)
    assert message.startswith("relayStore postgresql://relay:***@127.0.0.1:")
    assert "cannot use the database" in message
    assert "secret-pw" not in message and "\n" not in message
    assert redacted("postgresql://db.example/x") == "postgresql://db.example/x"


@pytest.fixture
def two_nodes(postgres_url):
    """
    Two stores on one database, as two relay nodes would have, sharing one
    fake clock for leases.
    """
    check_database(postgres_url)
    clock = Clock()
    nodes = [PostgresRelayStore(postgres_url, reactor, clock, lease_seconds=300) for _ in range(2)]
    listening = []
    for node in nodes:
        up = defer.Deferred()
        node.on_available = lambda who, up=up: None if who is not None or up.called else up.callback(None)
        node.start()
        listening.append(up)
    # A node LISTENs on a connection of its own, made in a thread after
    # start(), and wakes every waiter (None) once it does: a NOTIFY sent
    # before that never reaches it, so the tests begin only then.
    pytest_twisted.blockon(within(defer.gatherResults(listening), 60))
    yield clock, nodes
    for node in nodes:
        pytest_twisted.blockon(node.stop())


def received(tmp_path, content: bytes):
    temp = tmp_path / f"upload-{hashlib.sha256(content).hexdigest()[:8]}.part"
    temp.write_bytes(content)
    return temp


def woken(node, paired_id) -> defer.Deferred:
    """
    Fires when the node hears that a photo may be readable for the id.
    """
    d = defer.Deferred()

    def heard(who):
        if who == paired_id and not d.called:
            d.callback(who)

    node.on_available = heard
    return d


@pytest_twisted.ensureDeferred
async def test_photo_put_on_one_node_is_leased_and_confirmed_on_the_other(two_nodes, tmp_path):
    clock, (a, b) = two_nodes
    photo = jpeg_bytes(3_000_000)
    heard = woken(b, PAIRED_ID)
    temp = received(tmp_path, photo)
    assert await a.put(PAIRED_ID, PARTS, temp, None, len(photo), limits()) == (
        f"{PAIRED_ID}/NHID1234/arm.jpg", False)
    assert not temp.exists()
    assert await within(heard) == PAIRED_ID  # b was notified
    assert await b.holds(f"{PAIRED_ID}/NHID1234/arm.jpg") is True
    delivery = await b.lease(PAIRED_ID)
    assert await whole(delivery) == photo
    assert delivery.sha256 == hashlib.sha256(photo).digest()
    assert await a.lease(PAIRED_ID) is None  # the lease holds on every node
    assert await a.peek(PAIRED_ID) is None
    confirmed = await a.confirm(PAIRED_ID, delivery.photo.receipt)
    assert confirmed.relative == f"{PAIRED_ID}/NHID1234/arm.jpg"
    assert await b.confirm(PAIRED_ID, delivery.photo.receipt) is None
    assert await b.holds(f"{PAIRED_ID}/NHID1234/arm.jpg") is False


@pytest_twisted.ensureDeferred
async def test_same_name_twice_is_a_retry_or_a_new_photo(two_nodes, tmp_path):
    clock, (a, b) = two_nodes
    first, other = jpeg_bytes(seed=1), jpeg_bytes(seed=2)
    assert (await a.put(PAIRED_ID, PARTS, received(tmp_path, first), None, len(first), limits()))[1] is False
    assert await b.put(PAIRED_ID, PARTS, received(tmp_path, first), None, len(first), limits()) == (
        f"{PAIRED_ID}/NHID1234/arm.jpg", True)
    assert await b.put(PAIRED_ID, PARTS, received(tmp_path, other), None, len(other), limits()) == (
        f"{PAIRED_ID}/NHID1234/arm-1.jpg", False)
    assert await a.queued_bytes(PAIRED_ID) == len(first) + len(other)


@pytest_twisted.ensureDeferred
async def test_quota_counts_what_every_node_holds(two_nodes, tmp_path):
    clock, (a, b) = two_nodes
    photo = jpeg_bytes(100_000)
    await a.put(PAIRED_ID, PARTS, received(tmp_path, photo), None, len(photo), limits(150_000))
    other = jpeg_bytes(100_000)
    temp = received(tmp_path, other)
    with pytest.raises(TryLater):
        await b.put(PAIRED_ID, (PAIRED_ID, "x.jpg"), temp, None, len(other), limits(150_000))
    assert not temp.exists()


@pytest_twisted.ensureDeferred
async def test_lease_running_out_wakes_waiters_and_old_receipt_still_confirms(two_nodes, tmp_path):
    clock, (a, b) = two_nodes
    photo = jpeg_bytes()
    await a.put(PAIRED_ID, PARTS, received(tmp_path, photo), None, len(photo), limits())
    delivery = await a.lease(PAIRED_ID)
    heard = woken(b, PAIRED_ID)
    clock.advance(301)  # the lease runs out; the sweep notices and notifies
    await within(heard)
    assert (await b.peek(PAIRED_ID)).relative == delivery.photo.relative
    # Nobody leased it since: the old receipt still confirms.
    assert (await b.confirm(PAIRED_ID, delivery.photo.receipt)) is not None


@pytest_twisted.ensureDeferred
async def test_concurrent_leases_never_hand_out_one_photo_twice(two_nodes, tmp_path):
    clock, (a, b) = two_nodes
    for i in range(6):
        photo = jpeg_bytes(seed=i + 1)
        await a.put(PAIRED_ID, (PAIRED_ID, f"p{i}.jpg"), received(tmp_path, photo), None, len(photo), limits())
    leases = await defer.gatherResults([node.lease(PAIRED_ID) for node in (a, b) * 4])
    given = [d.photo.relative for d in leases if d is not None]
    assert sorted(given) == sorted(f"{PAIRED_ID}/p{i}.jpg" for i in range(6))


@pytest_twisted.ensureDeferred
async def test_code_issued_on_one_node_redeems_on_the_other_and_limits_are_shared(two_nodes):

    clock, (a, b) = two_nodes
    book_a, book_b = PostgresPairingDesk(a), PostgresPairingDesk(b)
    pairing = await book_a.issue("", "https://relay.example", "NZ", "192.0.2.9")
    checked, found = await book_b.redeem(pairing.code.lower(), "192.0.2.1")
    assert checked and (found.paired_id, found.proxy_server) == (pairing.paired_id, "https://relay.example")
    for i in range(documented.GUESSES_PER_ADDRESS):
        book = (book_a, book_b)[i % 2]
        assert await book.redeem("ZZZZ9", "192.0.2.7") == (True, None)
    # The right code no longer works from that address, on either node.
    assert await book_a.redeem(pairing.code, "192.0.2.7") == (False, None)
    assert await book_b.redeem(pairing.code, "192.0.2.7") == (False, None)
    assert (await book_b.redeem(pairing.code, "192.0.2.8"))[1].paired_id == pairing.paired_id
    clock.advance(3601)
    assert await book_a.redeem(pairing.code, "192.0.2.7") == (True, None)  # expired by now


@pytest_twisted.ensureDeferred
async def test_database_down_answers_try_later_then_recovers(postgres, tmp_path):
    url = postgres.new_database()
    check_database(url)
    store = PostgresRelayStore(url, reactor, Clock(), lease_seconds=300)
    store.start()
    try:
        photo = jpeg_bytes()
        await store.put(PAIRED_ID, PARTS, received(tmp_path, photo), None, len(photo), limits())
        await deferred_to_thread(postgres.stop)
        with pytest.raises(TryLater):
            await store.peek(PAIRED_ID)
        await deferred_to_thread(postgres.start)
        assert (await recovered(store.peek, PAIRED_ID)).relative == f"{PAIRED_ID}/NHID1234/arm.jpg"
    finally:
        await store.stop()


async def recovered(call, *args, within: float = 60.0):
    """
    The first answer of C{call} that is not try-later: the store reconnects
    by itself, with backoff.  Fails after C{within} seconds.
    """
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + within
    while True:
        try:
            return await call(*args)
        except TryLater:
            if reactor.seconds() > deadline:
                raise
            await deferLater(reactor, 0.2)


def deferred_to_thread(f):
    from twisted.internet.threads import deferToThread

    return deferToThread(f)


def test_schema_of_an_older_version_is_upgraded_in_place(postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE medimage_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO medimage_schema VALUES (1)")
        for statement in schema.STEPS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO pairing_codes VALUES ('ABCD', 'uPSE4UWHmJ8XqFUqvf', 'https://r', '', 1e12)")
    assert check_database(postgres_url) == (1, schema.VERSION)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM pairing_codes").fetchone()[0] == 1  # kept
        assert conn.execute("SELECT count(*) FROM pairing_issues").fetchone()[0] == 0  # added


@pytest_twisted.ensureDeferred
async def test_uncollected_photos_expire_but_leased_ones_stay(two_nodes, tmp_path):
    clock, (a, b) = two_nodes
    for name, seed in (("leased.jpg", 7), ("waiting.jpg", 8)):
        photo = jpeg_bytes(seed=seed)
        await a.put(PAIRED_ID, (PAIRED_ID, name), received(tmp_path, photo), None, len(photo), limits())
    clock.advance(1000)
    fresh = jpeg_bytes(seed=9)
    await b.put(PAIRED_ID, (PAIRED_ID, "fresh.jpg"), received(tmp_path, fresh), None, len(fresh), limits())
    assert (await b.lease(PAIRED_ID)).photo.relative == f"{PAIRED_ID}/leased.jpg"
    expired = await a.expire_older_than(cutoff=clock.seconds() - 500)
    assert [(p.paired_id, p.relative) for p in expired] == [(PAIRED_ID, f"{PAIRED_ID}/waiting.jpg")]
    assert await b.holds(f"{PAIRED_ID}/leased.jpg") and await b.holds(f"{PAIRED_ID}/fresh.jpg")
    assert not await b.holds(f"{PAIRED_ID}/waiting.jpg")
