"""
Where a server files photos: the photo store built from config.json (a
relay's only queues; a PC's copies to its targets and detected drives).
"""

from __future__ import annotations

from pathlib import Path

from twisted.logger import Logger

from ..config import Config, ConfigError, resolve_path
from ..photos.store import PhotoStore
from .drives import backup_drive_folders

log = Logger()


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
