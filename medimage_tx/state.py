"""
What the server's parts share while it runs: the current config (replaced,
never mutated), the store, the relay queue, counters and hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from .admin.activity import Activity
from .admin.log_ring import LogRing
from .config import Config, ConfigError, config_file_problem, config_stamp, save_config
from .durable import InThread, reactor_threads
from .pc.backups import BackupService
from .photos.store import PhotoStore

if TYPE_CHECKING:
    # The parts tap.py builds around a state and then names in it; they
    # import this module, so only the type checker imports them here.
    from .addons.pipeline import AddonService
    from .admin.access import Access
    from .discovery import DiscoveryStatus
    from .pc.filing import Filing
    from .pc.puller import RelayPuller
    from .relay import Relay
    from .relay_store import PairingDesk

log = Logger()


@dataclass
class ServerStats:
    photos_received: int = 0
    bytes_received: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class ServerState:
    """
    What the resources share.  C{config} is replaced, not mutated, when it
    changes (pairing, the transfer count), so each request reads the
    current one; C{config_listeners} are called after each change.

    The role is decided once, at start, by L{medimage_tx.tap}: a clinic PC
    has C{filing} and C{addons} (and C{puller}, C{discovery}
    when they run); a relay has C{relay} and C{pairing}.  tap.py fills
    these in as it builds them, before anything serves a request.
    """

    config: Config
    store: PhotoStore
    #: The reactor: its clock, its thread pool, its listeners.
    reactor: Any
    #: Recovery of the store at start (both roles); a PC's copies to its targets.
    backups: BackupService
    stats: ServerStats = field(default_factory=ServerStats)
    config_listeners: list[Callable[[], None]] = field(default_factory=list)
    config_stamp: Optional[tuple[int, int]] = None
    #: The web admin's view of recent photos.
    activity: Activity = field(default_factory=Activity)
    #: The latest log lines, for the logs page.
    log_ring: LogRing = field(default_factory=LogRing)
    #: Who may see and change the PC's own pages (both roles): tap.py sets
    #: it (it needs this state) before anything serves a request.
    access: Access = field(init=False, repr=False, compare=False)
    # A clinic PC's parts.
    filing: Optional[Filing] = None
    addons: Optional[AddonService] = None
    puller: Optional[RelayPuller] = None  # when allowGettingRemotePhotos
    discovery: Optional[DiscoveryStatus] = None  # while LAN discovery runs
    # A relay's parts.
    relay: Optional[Relay] = None
    pairing: Optional[PairingDesk] = None
    #: Runs blocking calls (file work, config writes) off the reactor
    #: thread: by default the reactor's thread pool.
    in_thread: InThread = None  # type: ignore[assignment]
    _config_lock: DeferredLock = field(default_factory=DeferredLock)
    #: Bytes from the relay not yet counted in config.json (it was broken).
    unsaved_transfer: int = 0

    def __post_init__(self) -> None:
        if self.in_thread is None:
            self.in_thread = reactor_threads(self.reactor)

    async def config_file_problem(self) -> str:
        """
        Why config.json on disk cannot be used now (edited by hand with a
        typo), or C{""}.  The server keeps running on the last good one.
        """
        return await self.in_thread(config_file_problem, self.config.path)

    async def save_config(self, **changes: Any) -> Config:
        """
        Change config.json (atomically, in a thread, one change at a time)
        and make the new config current.

        @raise ConfigError: config.json cannot be used now; it is left as
            it is (L{medimage_tx.config.save_config}).
        """
        async with self._config_lock:
            current = self.config
            new = await self.in_thread(lambda: save_config(current, **changes))
        self.replace_config(new)
        return new

    async def add_transfer(self, size: int) -> None:
        """
        Count bytes downloaded from the relay in config.json's C{transfer}.
        """
        async with self._config_lock:
            current = self.config
            total = current.transfer + self.unsaved_transfer + size
            try:
                new = await self.in_thread(lambda: save_config(current, transfer=total))
            except ConfigError:
                # Broken by hand: never rewritten from memory.  Counted
                # here and saved with the next photo once it is fixed.
                self.unsaved_transfer += size
                return
            self.unsaved_transfer = 0
        self.replace_config(new)

    def replace_config(self, new: Config) -> None:
        self.config = new
        self.config_stamp = config_stamp(new.path)
        for listener in list(self.config_listeners):
            listener()
