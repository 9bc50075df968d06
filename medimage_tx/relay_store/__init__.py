"""
The relay's stores (docs/relay-cluster.md): where a relay keeps its queue,
leases, receipts, photo bytes, pairing codes and guess limits.  The local
disk is the default; C{relayStore: "postgresql://..."} shares one
PostgreSQL database between several relay nodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from twisted.application.service import Service
from twisted.logger import Logger

from ..durable import BackgroundJSONWriter, InThread, read_json, reactor_threads
from .pairing_codes import PairingBook
from ..photos.store import PhotoStore
from .base import RelayStoreUnavailable
from .local import LocalPairingDesk, LocalRelayStore

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    # Imported when configured only: its driver is an optional dependency.
    from .postgres import PostgresPairingDesk, PostgresRelayStore

#: The two stores have the same methods (docs/relay-cluster.md).
RelayStore = Union[LocalRelayStore, "PostgresRelayStore"]
PairingDesk = Union[LocalPairingDesk, "PostgresPairingDesk"]

log = Logger()


def open_relay_store(url: str, photo_store: PhotoStore, data_dir: Path, reactor: Any, clock: IReactorTime,
                     lease_seconds: float, in_thread: Optional[InThread] = None) -> tuple[RelayStore, PairingDesk]:
    """
    The relay's store and pairing desk: on this disk when C{url} is empty,
    else in the PostgreSQL database it names (checked, and its schema
    created or upgraded, now).

    @raise RelayStoreUnavailable: one line saying why the store cannot be used.
    """
    if not url:
        in_thread = in_thread or reactor_threads(reactor)
        store = LocalRelayStore(photo_store, reactor, clock, lease_seconds, in_thread,
                                known_path=data_dir / "relay-known.json")
        queued = store.load_existing()
        if queued:
            log.info("Relay: {count} photo(s) still queued from before", count=queued)
        book = PairingBook(clock.seconds)
        # Codes and guess counts survive restarts (and crashes).
        book.restore(read_json(data_dir / "pairing.json"))
        save = BackgroundJSONWriter(data_dir / "pairing.json", book.snapshot, in_thread).save
        return store, LocalPairingDesk(book, save)
    try:
        from .postgres import PostgresPairingDesk, PostgresRelayStore, check_database, redacted
    except ImportError as e:
        raise RelayStoreUnavailable(
            f"relayStore needs the PostgreSQL driver: pip install 'medimage_tx[postgresql]' ({e})") from None
    before, after = check_database(url)
    log.info("Relay store: PostgreSQL at {url}, schema version {after}{upgraded}", url=redacted(url),
             after=after, upgraded=f" (upgraded from {before})" if before != after else "")
    shared = PostgresRelayStore(url, reactor, clock, lease_seconds)
    return shared, PostgresPairingDesk(shared)


class RelayStoreService(Service):
    """
    Starts the store's connections and timers with the server, and closes
    them when it stops.
    """

    def __init__(self, store: RelayStore):
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.start()

    def stopService(self):
        super().stopService()
        return self.store.stop()
