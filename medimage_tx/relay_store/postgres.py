"""
The relay store in PostgreSQL, shared by every relay node that names the
same C{relayStore} (docs/relay-cluster.md).

The queue, leases, receipts, photo bytes, pairing codes and failed
redemptions are rows; every change is one transaction, committed before
the node answers.  Two nodes never hand out the same photo: a lease's row
lock makes the second wait, and PostgreSQL's re-check then sees the row
leased; C{SKIP LOCKED} only spares the wait (the next photo at once).  A commit that makes a photo readable
sends C{NOTIFY medimage_relay, '<id>'}; each node listens on one connection
and wakes its own long polls (no connection or thread per poll).

psycopg 3 is blocking: every query runs in this store's thread pool, never
on the reactor thread.  While the database cannot be reached, calls raise
L{TryLater} (the phone and the PC retry), and the connections come back by
themselves.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ..errors import Rejected, TryLater
from ..identity import PAIRED_ID
from ..photos.naming import with_suffix_number
from .pairing_codes import (
    CODE_ALPHABET,
    CODE_LENGTH,
    CODE_LIFETIME,
    FAILURE_WINDOW,
    FAILURES_IN_TOTAL,
    FAILURES_PER_ADDRESS,
    ISSUES_IN_TOTAL,
    ISSUES_PER_ADDRESS,
    MAX_COUNTRY,
    MAX_GUID,
    MAX_LIVE_CODES,
    MAX_PROXY_SERVER,
    Pairing,
    new_id,
    normalise_code,
)
from . import schema
from .base import Delivery, QueuedPhoto, RelayStoreUnavailable, quota_exceeded, relay_full, split_name
from twisted.internet.threads import deferToThread
from .known_ids import IDS_PER_ADDRESS, KNOWN_SECONDS, MAX_KNOWN_IDS, RESTAMP_SECONDS

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from ..config import Config

CHANNEL = "medimage_relay"
#: Different photos under one name: C{name}, C{name-1}, ... up to this.
MAX_NUMBER = 100000
#: How often each node looks for leases that ran out (on nodes that died,
#: too) and wakes the long polls waiting for them.
SWEEP_SECONDS = 5.0
CONNECT_TIMEOUT = 5
#: A call waits this long for a free connection before answering try-later.
POOL_TIMEOUT = 3.0
RETRY_AFTER = 10
#: How long a node trusts "not known" (an address over its limit) before
#: asking the database again.
REFUSAL_SECONDS = 60.0

log = Logger()


def redacted(url: str) -> str:
    """
    The URL without its password, for messages and logs.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_database(url: str) -> tuple[int, int]:
    """
    At start: connect, and create or upgrade the schema.  Returns the
    schema versions before and after.

    @raise RelayStoreUnavailable: with one line saying why.
    """
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            return schema.upgrade(conn)
    except schema.SchemaTooNew as e:
        raise RelayStoreUnavailable(f"relayStore {redacted(url)}: {e}") from None
    except psycopg.Error as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise RelayStoreUnavailable(
            f"relayStore {redacted(url)}: cannot use the database: {reason}") from None


@dataclass
class _Lease:
    row: int
    receipt: str


class PostgresRelayStore:
    """
    @param now: the clock, as a function returning seconds (tests pass a
        fake one; in production every node's clock is NTP time).
    @param on_available: called on the reactor thread with an id whenever a
        photo may have become readable for it, on any node.
    """

    name = "postgresql"

    def __init__(self, url: str, reactor: Any, clock: IReactorTime, lease_seconds: float,
                 threads: int = 8, sweep_seconds: float = SWEEP_SECONDS):
        self.url = url
        self.reactor = reactor
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.sweep_seconds = sweep_seconds
        self.on_available: Callable[[Optional[str]], None] = lambda paired_id: None
        self._threads = ThreadPool(minthreads=0, maxthreads=threads, name="relay-store")
        self._pool: Optional[psycopg_pool.ConnectionPool] = None
        self._listener: Optional[_Listener] = None
        self._sweep_call: Optional[IDelayedCall] = None
        self._unavailable = False
        self._pool_full = False
        # id -> (until when this node trusts the answer, known or not)
        self._noted: dict[str, tuple[float, bool]] = {}

    # Life cycle

    def start(self) -> None:
        self._threads.start()
        self._pool = psycopg_pool.ConnectionPool(
            self.url, min_size=1, max_size=self._threads.max, open=False, timeout=POOL_TIMEOUT,
            kwargs={"connect_timeout": CONNECT_TIMEOUT, "autocommit": True},
            check=psycopg_pool.ConnectionPool.check_connection,
            name="medimage-relay")
        self._pool.open(wait=False)
        self._listener = _Listener(self.url, self.reactor, self._notified)
        self._listener.start()
        self._schedule_sweep()

    def stop(self) -> Deferred:
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None

        def close() -> None:
            if listener is not None:
                listener.stop()
            if pool is not None:
                pool.close(timeout=5)

        def stop_threads(result: object) -> object:
            self._threads.stop()
            return result

        d = deferToThread(close)
        d.addBoth(stop_threads)
        return d

    def _notified(self, paired_id: Optional[str]) -> None:
        self.on_available(paired_id)

    # Calls: each runs in one transaction, in the thread pool.

    def _call(self, work: Callable[..., Any], *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self._threads, self._in_transaction, work, *args)

    def _in_transaction(self, work: Callable[..., Any], *args: Any) -> Any:
        pool = self._pool
        if pool is None:
            raise TryLater("The relay is stopping; try again later.", retry_after=RETRY_AFTER)
        try:
            with pool.connection() as conn:
                with conn.transaction():
                    result = work(conn, *args)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError) as e:
            if not self._unavailable:
                self._unavailable = True
                log.warn("Relay store: the database cannot be reached ({reason}); answering "
                         "try-later until it is back", reason=" ".join(str(e).split())[:200])
            raise TryLater("The relay's database cannot be reached; try again later.",
                           retry_after=RETRY_AFTER) from None
        if self._unavailable:
            self._unavailable = False
            log.info("Relay store: the database can be reached again")
        return result

    # The queue

    def put(self, paired_id: str, parts: Sequence[str], temp_path: Path, fd: Optional[int],
            size: int, config: Config) -> Deferred:
        """
        Store a received photo (the temporary file is removed) and queue it;
        fires with C{(relative, duplicate)} once committed.

        @raise TryLater: the id holds C{relayQuotaBytes} already, the
            database C{relayTotalBytes}, or the database cannot be reached.
        """
        return self._call(self._put, paired_id, tuple(parts), temp_path, fd, size,
                          config.relayQuotaBytes, config.relayTotalBytes, config.relayUnknownBytes,
                          self.clock.seconds())

    def _put(self, conn, paired_id, parts, temp_path: Path, fd, size, quota, total_limit, unknown_limit,
             now):
        try:
            if fd is not None:
                os.close(fd)
            body = temp_path.read_bytes()
        finally:
            temp_path.unlink(missing_ok=True)
        digest = hashlib.sha256(body).digest()
        # One upload at a time per id: the quota check and the insert agree.
        conn.execute("SELECT pg_advisory_xact_lock(1, hashtext(%s))", (paired_id,))
        held = conn.execute("SELECT coalesce(sum(size), 0) FROM relay_photos WHERE paired_id = %s",
                            (paired_id,)).fetchone()[0]
        relative, duplicate, number = self._name_for(conn, parts, digest)
        if duplicate:
            return relative, True
        if held + len(body) > quota:
            raise quota_exceeded()
        cutoff = now - KNOWN_SECONDS
        known = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM relay_known_ids WHERE paired_id = %s AND last_read >= %s)",
            (paired_id, cutoff)).fetchone()[0]
        if not known:
            # Ids no clinic is known to read share a small pool; uploads to
            # them go one at a time over all nodes, so the pool holds exactly.
            conn.execute("SELECT pg_advisory_xact_lock(3, 1)")
            unknown = conn.execute(
                "SELECT coalesce(sum(p.size), 0) FROM relay_photos p WHERE NOT EXISTS ("
                "  SELECT 1 FROM relay_known_ids k WHERE k.paired_id = p.paired_id AND k.last_read >= %s)",
                (cutoff,)).fetchone()[0]
            if unknown + len(body) > unknown_limit:
                self._note_pool(True, unknown)
                raise relay_full()
            self._note_pool(False, unknown)
        # In all: uploads to other ids committing at this moment are not
        # seen, so the total may pass by what they carry (a few photos).
        total = conn.execute("SELECT coalesce(sum(size), 0) FROM relay_photos").fetchone()[0]
        if total + len(body) > total_limit:
            raise relay_full()
        conn.execute(
            "INSERT INTO relay_photos (paired_id, relative, size, sha256, body, queued_at, "
            "first_name, name_number) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (paired_id, relative, len(body), digest, body, now, "/".join(parts), number))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, paired_id))
        return relative, False

    @staticmethod
    def _name_for(conn, parts: tuple[str, ...], digest: bytes) -> tuple[str, bool, int]:
        """
        Where a photo sent under C{parts} goes: C{(relative, duplicate,
        number)}.  The same bytes under that name (or at that very path)
        are a duplicate; else the name itself if free, or the number after
        the highest under it: a few indexed look-ups, however many photos
        the name has.
        """
        first = "/".join(parts)
        row = conn.execute(
            "SELECT relative FROM relay_photos WHERE (first_name = %s OR relative = %s) "
            "AND sha256 = %s LIMIT 1", (first, first, digest)).fetchone()
        if row is not None:
            return row[0], True, 0
        stem, extension = split_name(parts[-1])
        highest = conn.execute(
            "SELECT max(name_number) FROM relay_photos WHERE first_name = %s", (first,)).fetchone()[0]
        number = 0
        while number < MAX_NUMBER:
            relative = "/".join(parts[:-1] + (with_suffix_number(stem, number) + extension,))
            taken = conn.execute("SELECT 1 FROM relay_photos WHERE relative = %s",
                                 (relative,)).fetchone()
            if taken is None:
                return relative, False, number
            # Taken: past the highest of this name (a name like "arm-1.jpg"
            # sent as such takes arm.jpg's number 1; the next is looked at).
            number = max(number + 1, (highest or 0) + 1)
        raise TryLater("Too many different photos with this name")
    def _note_pool(self, full: bool, held: int) -> None:
        # One line when the pool fills and one when it has room again (per node).
        if full and not self._pool_full:
            log.warn("Relay: refusing uploads for ids no clinic PC has read from here: they hold "
                     "{held} bytes (relayUnknownBytes); known ids are not affected", held=held)
        elif not full and self._pool_full:
            log.info("Relay: room again for ids no clinic PC has read from here")
        self._pool_full = full

    # Ids a clinic is known to read (L{medimage_tx.relay_store.known_ids})

    def note_reader(self, paired_id: str, address: str) -> Deferred:
        """
        C{/read/<id>} from C{address} (or a code redeemed there that names
        the id); fires with whether the id is known now.  Each node keeps
        its answers for a while, so a PC's polls seldom reach the database.
        """
        now = self.clock.seconds()
        cached = self._noted.get(paired_id)
        if cached is not None and cached[0] > now:
            return succeed(cached[1])

        def remember(known: bool) -> bool:
            if len(self._noted) >= MAX_KNOWN_IDS:
                self._noted.pop(next(iter(self._noted)))
            self._noted[paired_id] = (now + (RESTAMP_SECONDS if known else REFUSAL_SECONDS), known)
            return known

        return self._call(self._note_reader, paired_id, address, now).addCallback(remember)

    @staticmethod
    def _note_reader(conn, paired_id, address, now) -> bool:
        cutoff = now - KNOWN_SECONDS
        row = conn.execute("SELECT last_read FROM relay_known_ids WHERE paired_id = %s",
                           (paired_id,)).fetchone()
        if row is not None and row[0] >= cutoff:
            if now - row[0] >= RESTAMP_SECONDS:
                conn.execute("UPDATE relay_known_ids SET last_read = %s WHERE paired_id = %s",
                             (now, paired_id))
            return True
        # A new id: one at a time over all nodes, so the limits hold exactly.
        conn.execute("SELECT pg_advisory_xact_lock(3, 0)")
        per_address, in_all = conn.execute(
            "SELECT count(*) FILTER (WHERE address = %s), count(*) FROM relay_known_ids WHERE last_read >= %s",
            (address, cutoff)).fetchone()
        if per_address >= IDS_PER_ADDRESS or in_all >= MAX_KNOWN_IDS:
            return False
        conn.execute(
            "INSERT INTO relay_known_ids (paired_id, address, last_read) VALUES (%s, %s, %s) "
            "ON CONFLICT (paired_id) DO UPDATE SET address = excluded.address, last_read = excluded.last_read",
            (paired_id, address, now))
        return True

    def forget_unread(self, cutoff: float) -> Deferred:
        """
        Forget the ids nobody read since C{cutoff}; fires with how many.
        """
        return self._call(lambda conn: conn.execute(
            "DELETE FROM relay_known_ids WHERE last_read < %s", (cutoff,)).rowcount)

    def peek(self, paired_id: str) -> Deferred:
        """
        Fires with the oldest readable L{QueuedPhoto} for the id, or None.
        """
        return self._call(self._peek, paired_id, self.clock.seconds())

    @staticmethod
    def _peek(conn, paired_id, now):
        row = conn.execute(
            "SELECT relative, size FROM relay_photos WHERE paired_id = %s "
            "AND (leased_until IS NULL OR leased_until <= %s) ORDER BY id LIMIT 1",
            (paired_id, now)).fetchone()
        return QueuedPhoto(paired_id, row[0], row[1]) if row else None

    def lease(self, paired_id: str) -> Deferred:
        """
        Lease the oldest readable photo; fires with a L{Delivery} (with its
        receipt and bytes) or None.
        """
        return self._call(self._lease, paired_id, self.clock.seconds(), self.lease_seconds)

    def _lease(self, conn, paired_id, now, seconds):
        receipt = secrets.token_urlsafe(18)
        # Not the photo's bytes: they are read a chunk at a time as the
        # reader takes them (L{_read_chunk}), so a slow reader holds one
        # chunk, not the photo (32 slow readers of a 20 MB photo held 737 MB).
        row = conn.cursor(binary=True).execute(
            "UPDATE relay_photos SET receipt = %s, leased_until = %s WHERE id = ("
            "  SELECT id FROM relay_photos WHERE paired_id = %s"
            "  AND (leased_until IS NULL OR leased_until <= %s)"
            "  ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ") RETURNING id, relative, size, sha256",
            (receipt, now + seconds, paired_id, now)).fetchone()
        if row is None:
            return None
        row_id = row[0]
        return Delivery(QueuedPhoto(paired_id, row[1], row[2], receipt), bytes(row[3]),
                        read_chunk=lambda offset, length: self._call(
                            self._read_chunk, row_id, receipt, offset, length))

    @staticmethod
    def _read_chunk(conn, row_id, receipt, offset, length) -> bytes:
        # The body is stored EXTERNAL (not compressed), so PostgreSQL reads
        # only the TOAST pieces this range covers.  The receipt must still
        # be ours: a photo given to another reader since is not sent on.
        row = conn.cursor(binary=True).execute(
            "SELECT substring(body FROM %s FOR %s) FROM relay_photos WHERE id = %s AND receipt = %s",
            (offset + 1, length, row_id, receipt)).fetchone()
        return bytes(row[0]) if row is not None else b""

    def release(self, delivery: Delivery) -> Deferred:
        """
        Make a leased photo readable again at once (its sending failed).
        """
        return self._call(self._release, delivery.photo)

    @staticmethod
    def _release(conn, photo: QueuedPhoto):
        conn.execute("UPDATE relay_photos SET leased_until = NULL, receipt = NULL "
                     "WHERE relative = %s AND receipt = %s", (photo.relative, photo.receipt))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, photo.paired_id))

    def confirm(self, paired_id: str, receipt: str) -> Deferred:
        """
        Remove the photo the receipt was given for; fires with its
        L{QueuedPhoto}, or None for an unknown (or superseded) receipt.
        """
        return self._call(self._confirm, paired_id, receipt)

    @staticmethod
    def _confirm(conn, paired_id, receipt):
        row = conn.execute(
            "DELETE FROM relay_photos WHERE paired_id = %s AND receipt = %s RETURNING relative, size",
            (paired_id, receipt)).fetchone()
        return QueuedPhoto(paired_id, row[0], row[1], receipt) if row else None

    def holds(self, relative: str) -> Deferred:
        """
        Fires with whether the photo is on the relay (waiting or leased).
        """
        return self._call(lambda conn: conn.execute(
            "SELECT EXISTS (SELECT 1 FROM relay_photos WHERE relative = %s)", (relative,)
        ).fetchone()[0])

    def queued_bytes(self, paired_id: str) -> Deferred:
        return self._call(lambda conn: conn.execute(
            "SELECT coalesce(sum(size), 0) FROM relay_photos WHERE paired_id = %s", (paired_id,)
        ).fetchone()[0])

    def expire_older_than(self, cutoff: float) -> Deferred:
        """
        Remove the waiting photos queued before C{cutoff}; fires with them.
        """
        return self._call(self._expire, cutoff, self.clock.seconds())

    @staticmethod
    def _expire(conn, cutoff, now):
        return [QueuedPhoto(*row) for row in conn.execute(
            "DELETE FROM relay_photos WHERE queued_at < %s "
            "AND (leased_until IS NULL OR leased_until <= %s) RETURNING paired_id, relative, size",
            (cutoff, now))]

    # Leases that ran out, here or on a node that died

    def _schedule_sweep(self) -> None:
        self._sweep_call = self.clock.callLater(self.sweep_seconds, self._sweep)

    def _sweep(self) -> None:
        d = self._call(self._expire_leases, self.clock.seconds())
        d.addErrback(lambda failure: None if failure.check(TryLater) else
                     log.failure("Relay store: the lease sweep failed", failure))
        d.addBoth(lambda _: self._schedule_sweep() if self._pool is not None else None)

    @staticmethod
    def _expire_leases(conn, now):
        # The receipt stays: it confirms until someone else leases the photo.
        ids = [row[0] for row in conn.execute(
            "UPDATE relay_photos SET leased_until = NULL WHERE leased_until <= %s "
            "RETURNING paired_id", (now,))]
        for paired_id in set(ids):
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, paired_id))
        return len(ids)


class _Listener:
    """
    One connection per node that C{LISTEN}s for new photos, in one thread;
    reconnects by itself.  While it was away notifications may have been
    missed, so after (re)connecting it wakes every waiter (C{None}).
    """

    def __init__(self, url: str, reactor: Any, notify: Callable[[Optional[str]], None]):
        self.url = url
        self.reactor = reactor
        self.notify = notify
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-store-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                     keepalives=1, keepalives_idle=10, keepalives_interval=5,
                                     keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.reactor.callFromThread(self.notify, None)
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=0.25):
                            self.reactor.callFromThread(self.notify, notice.payload)
            except psycopg.Error:
                self._stopping.wait(0.5)


class PostgresPairingDesk:
    """
    Pairing codes and their limits (L{medimage_tx.relay_store.pairing_codes}: the same
    numbers) in the shared database: a code issued on one node redeems on
    any, and the limits count issues and failed compares on all nodes
    together, committed before the answer.  Each limit holds over any hour
    exactly: every counted event is a row (only allowed events are counted,
    so the rows are bounded by the limits in total).
    """

    def __init__(self, store: PostgresRelayStore):
        self.store = store

    def issue(self, guid: str, proxy_server: str, country: str, address: str) -> Deferred:
        if len(guid) > MAX_GUID or len(proxy_server) > MAX_PROXY_SERVER or len(country) > MAX_COUNTRY:
            raise Rejected(f"guid, proxyServer and country may be at most {MAX_GUID}, "
                           f"{MAX_PROXY_SERVER} and {MAX_COUNTRY} characters")
        return self.store._call(self._issue, guid, proxy_server, country, address,
                                self.store.clock.seconds())

    @staticmethod
    def _issue(conn, guid, proxy_server, country, address, now):
        # Issues and compares are rare: one at a time over all nodes keeps
        # the counting exact.
        conn.execute("SELECT pg_advisory_xact_lock(2, 0)")
        conn.execute("DELETE FROM pairing_codes WHERE expires <= %s", (now,))
        live, soonest = conn.execute("SELECT count(*), min(expires) FROM pairing_codes").fetchone()
        if live >= MAX_LIVE_CODES:
            raise TryLater("Too many pairing codes are live; try again later.",
                           retry_after=max(1, int(soonest - now) + 1), status=429,
                           phrase="Too many pairing codes; try again later")
        wait = _limited(conn, "pairing_issues", address, now, CODE_LIFETIME, ISSUES_PER_ADDRESS,
                        ISSUES_IN_TOTAL)
        if wait is not None:
            raise TryLater("Too many pairing codes were asked for; try again later.",
                           retry_after=max(1, int(wait) + 1), status=429,
                           phrase="Too many pairing codes; try again later")
        conn.execute("INSERT INTO pairing_issues (address, at) VALUES (%s, %s)", (address, now))
        paired_id = guid if PAIRED_ID.fullmatch(guid or "") else new_id()
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            inserted = conn.execute(
                "INSERT INTO pairing_codes (code, paired_id, proxy_server, country, expires) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (code) DO NOTHING RETURNING code",
                (code, paired_id, proxy_server, country, now + CODE_LIFETIME)).fetchone()
            if inserted is not None:
                return Pairing(code, paired_id, proxy_server, country, now + CODE_LIFETIME)

    def redeem(self, code: str, address: str) -> Deferred:
        """
        Fires with C{(checked, pairing)}: C{checked} is False when the limits
        allow no more compares (then nothing was looked up or counted).
        """
        return self.store._call(self._redeem, normalise_code(code), address, self.store.clock.seconds())

    @staticmethod
    def _redeem(conn, code, address, now):
        conn.execute("SELECT pg_advisory_xact_lock(2, 0)")
        if _limited(conn, "pairing_failures", address, now, FAILURE_WINDOW, FAILURES_PER_ADDRESS,
                    FAILURES_IN_TOTAL) is not None:
            return False, None
        row = conn.execute(
            "SELECT code, paired_id, proxy_server, country, expires FROM pairing_codes "
            "WHERE code = %s AND expires > %s", (code, now)).fetchone()
        if row is not None:
            return True, Pairing(*row)
        conn.execute("INSERT INTO pairing_failures (address, at) VALUES (%s, %s)", (address, now))
        return True, None


def _limited(conn, table: str, address: str, now: float, window: float, per_address: int,
             in_total: int) -> Optional[float]:
    """
    None if one more event from C{address} keeps within the limits over the
    last C{window} seconds; else the seconds until it would.
    """
    conn.execute(f"DELETE FROM {table} WHERE at <= %s", (now - window,))
    waits = []
    for where, args, limit in (("address = %s", (address,), per_address), ("true", (), in_total)):
        # The event that must leave the window before one more fits.
        row = conn.execute(f"SELECT at FROM {table} WHERE {where} ORDER BY at DESC OFFSET %s LIMIT 1",
                           (*args, limit - 1)).fetchone()
        if row is not None:
            waits.append(row[0] + window - now)
    return max(waits) if waits else None
