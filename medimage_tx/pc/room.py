"""
Room on a clinic PC's disk (finding 19.2: a hostile relay filled a PC's
disk at 150-180 MB/s, and its held folder had no bound).  The PC keeps
C{minFreeBytes} free on the disk of its data folder: below it, phones are
answered "try later" (C{507}) and the puller does not read the relay; and
it reads nothing from the relay while the held folder holds
C{heldMaxFiles} files or C{heldMaxBytes} bytes.  Plain blocking Python:
the callers run it in a thread.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import TryLater
from ..photos.held import HELD

if TYPE_CHECKING:
    from ..config import Config


def free_bytes(folder: Path) -> Optional[int]:
    """
    Free bytes on C{folder}'s disk for this process, or None if it cannot
    be told.
    """
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def below_floor(data_dir: Path, config: Config, room_for: int = 0) -> Optional[str]:
    """
    Why the disk has too little room now (one line), or None.

    @param room_for: bytes about to be written (a download from the relay:
        up to C{maxUploadSize}), which must fit above the floor too.
    """
    free = free_bytes(data_dir)
    if free is not None and free < config.minFreeBytes + room_for:
        return (f"only {free} bytes free on the disk of {data_dir} (the server keeps minFreeBytes, "
                f"{config.minFreeBytes}, free" + (f", plus room for one photo of up to {room_for} bytes)"
                                                  if room_for else ")"))
    return None


def held_full(data_dir: Path, held: tuple[int, int], config: Config) -> Optional[str]:
    """
    Why the held folder may take no more (one line), or None.
    """
    count, size = held
    if count >= config.heldMaxFiles or size >= config.heldMaxBytes:
        return (f"the held folder {data_dir / HELD} is full ({count} files, {size} bytes; "
                f"heldMaxFiles {config.heldMaxFiles}, heldMaxBytes {config.heldMaxBytes}): "
                f"file or delete what is there")
    return None


def check_room_for_upload(data_dir: Path, config: Config) -> None:
    """
    @raise TryLater: C{507}, the disk is below C{minFreeBytes}.
    """
    why = below_floor(data_dir, config)
    if why is not None:
        raise TryLater(f"The server cannot store the photo right now: {why}", status=507,
                       phrase="The clinic computer's disk is full; the photo stays on the phone")
