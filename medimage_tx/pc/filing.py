"""
Filing a photo on a clinic PC, one path whether it came from a phone or
from the relay: L{Filing} stores it durably, runs its add-ons, has it
copied to the targets, and counts it.  L{photo_store} builds the store
from config.json (a relay's only queues; a PC's copies to its targets and
detected drives).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Sequence

from twisted.logger import Logger

from ..config import Config, ConfigError, resolve_path
from ..photos.store import PhotoStore, Stored
from .drives import backup_drive_folders
from .room import check_room_for_upload

if TYPE_CHECKING:
    from ..addons.pipeline import AddonService
    from ..state import ServerState

log = Logger()


class Filing:
    """
    The one way a complete photo enters the clinic's folders.
    """

    def __init__(self, state: ServerState, addons: AddonService):
        self.state = state
        self.addons = addons

    async def file(self, temp_path: Path, fd: Optional[int], parts: Sequence[str], size: int,
                   source: Literal["phone", "relay"]) -> Stored:
        """
        File a complete temporary file under C{parts} (see
        L{PhotoStore.store}); what the sender's answer may say once this
        returns.  A retry of a photo already filed is not counted again.
        """
        try:
            # Below minFreeBytes: try later (finding 19.2), before the photo
            # takes more of the disk.
            await self.state.in_thread(check_room_for_upload, self.state.store.data_dir, self.state.config)
        except BaseException:
            await self.state.in_thread(_discard, temp_path, fd)
            raise
        stored = await self.addons.store(temp_path, fd, parts)
        if not stored.duplicate:
            self.state.stats.photos_received += 1
            self.state.stats.bytes_received += size
            self.state.activity.note(stored.relative, source)
        return stored


def _discard(temp_path: Path, fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)
    try:
        os.unlink(temp_path)
    except OSError:
        pass


def photo_store(config: Config, data_dir: Path) -> PhotoStore:
    """
    The store a server with C{config} files photos into: a relay's only
    queues; a PC's copies to its targets.  Raises L{ConfigError}.
    """
    if config.allowPhotosLeaving:
        store = PhotoStore(data_dir, [], keep_master=True)
        try:
            store.prepare()
        except OSError as e:
            raise ConfigError(f"{data_dir}: cannot create the photo folders: {e.strerror}")
        return store
    return _make_store(config, data_dir)


def _make_store(config: Config, data_dir: Path) -> PhotoStore:
    base = config.path.parent
    targets = [resolve_path(folder, base) for folder in config.backupTo]
    store = PhotoStore(data_dir, targets, config.keepMaster, config.fileMode)
    try:
        store.prepare()
    except OSError as e:
        raise ConfigError(f"{data_dir}: cannot create the photo folders: {e.strerror}")
    if config.onStartBackupDriveDetect:
        drives = backup_drive_folders(data_dir)
        for folder in drives:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                log.warn("Cannot use the drive folder {folder}: {reason}", folder=folder, reason=e.strerror)
        store.backup_to = store.backup_to + tuple(drives)
    return store
