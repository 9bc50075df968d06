"""
What the server's parts share while it runs: the current config (replaced,
never mutated), the store, the relay queue, counters and hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.internet.defer import DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from .config import Config, config_stamp, save_config
from .photos.store import PhotoStore

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
    """

    config: Config
    store: PhotoStore
    reactor: Any
    backups: Any = None  # BackupService
    relay: Any = None  # Relay, on a relay
    pairing: Any = None  # the pairing desk (relay_store), on a relay
    discovery: Any = None  # DiscoveryStatus while LAN discovery runs
    access: Any = None  # admin.Access: who may see and change the PC's own pages
    stats: ServerStats = field(default_factory=ServerStats)
    config_listeners: list[Callable[[], None]] = field(default_factory=list)
    config_stamp: Optional[tuple[int, int]] = None
    #: The add-ons (medimage_tx.addons.AddonService), on a clinic PC.
    addons: Any = None
    #: The web admin's view of recent photos (admin.activity.Activity).
    activity: Any = None
    #: The latest log lines (admin.log_ring.LogRing), for the logs page.
    log_ring: Any = None
    #: The relay puller (puller.RelayPuller) on a clinic PC, for its status.
    puller: Any = None
    _config_lock: DeferredLock = field(default_factory=DeferredLock)

    def in_thread(self, f: Callable, *args: Any):
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    async def store_photo(self, temp_path, fd, parts):
        """
        Store a complete upload on a clinic PC (from a phone or pulled from
        the relay), copy it to the targets and run its add-ons
        (L{medimage_tx.photos.store.PhotoStore.store}).
        """
        if self.addons is not None:
            return await self.addons.store(temp_path, fd, parts)
        stored = await self.in_thread(self.store.store, temp_path, fd, parts)
        if self.backups is not None:
            self.backups.note(stored.backup_failures, succeeded=self.store.backup_to)
        return stored

    async def save_config(self, **changes: Any) -> Config:
        """
        Change config.json (atomically, in a thread, one change at a time)
        and make the new config current.
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
            new = await self.in_thread(lambda: save_config(current, transfer=current.transfer + size))
        self.replace_config(new)

    def replace_config(self, new: Config) -> None:
        self.config = new
        self.config_stamp = config_stamp(new.path)
        for listener in list(self.config_listeners):
            listener()
